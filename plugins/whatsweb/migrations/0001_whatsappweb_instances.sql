-- WhatsApp Web (linked device) instances.
-- Split and run by host/migrate.c: see migrations/core/0001_core.sql for the
-- rules. Secrets (tokens, app secrets) never go here: they are sealed in
-- instances.secrets. Non-secret provider state only.

CREATE TABLE whatsappweb_instances (
    instance_id VARCHAR(64) NOT NULL,
    -- Browser profile / session store, under the daemon's state_dir.
    profile_dir VARCHAR(1024) NULL,
    phone VARCHAR(32) NULL,
    last_qr_at DATETIME(6) NULL,
    session_state ENUM('new', 'qr', 'connected', 'logged_out') NOT NULL DEFAULT 'new',
    updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (instance_id),
    CONSTRAINT whatsappweb_instances_instance FOREIGN KEY (instance_id) REFERENCES instances (id)
        ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
