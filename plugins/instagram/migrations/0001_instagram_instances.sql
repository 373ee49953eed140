-- Instagram messaging instances.
-- Split and run by host/migrate.c: see migrations/core/0001_core.sql for the
-- rules. Secrets (tokens, app secrets) never go here: they are sealed in
-- instances.secrets. Non-secret provider state only.

CREATE TABLE instagram_instances (
    instance_id VARCHAR(64) NOT NULL,
    ig_user_id VARCHAR(64) NULL,
    page_id VARCHAR(64) NULL,
    updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (instance_id),
    KEY instagram_instances_ig_user (ig_user_id),
    CONSTRAINT instagram_instances_instance FOREIGN KEY (instance_id) REFERENCES instances (id)
        ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
