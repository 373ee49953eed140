-- Discord bot instances. The gateway session is kept so a restart can
-- resume instead of identifying again.
-- Split and run by host/migrate.c: see migrations/core/0001_core.sql for the
-- rules. Secrets (tokens, app secrets) never go here: they are sealed in
-- instances.secrets. Non-secret provider state only.

CREATE TABLE discord_instances (
    instance_id VARCHAR(64) NOT NULL,
    application_id VARCHAR(32) NULL,
    session_id VARCHAR(128) NULL,
    resume_gateway_url VARCHAR(2048) NULL,
    last_sequence BIGINT NULL,
    updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (instance_id),
    CONSTRAINT discord_instances_instance FOREIGN KEY (instance_id) REFERENCES instances (id)
        ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
