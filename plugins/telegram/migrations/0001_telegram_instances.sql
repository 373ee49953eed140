-- Telegram Bot API instances.
-- Split and run by host/migrate.c: see migrations/core/0001_core.sql for the
-- rules. Secrets (tokens, app secrets) never go here: they are sealed in
-- instances.secrets. Non-secret provider state only.

CREATE TABLE telegram_instances (
    instance_id VARCHAR(64) NOT NULL,
    bot_id BIGINT NULL,
    bot_username VARCHAR(64) NULL,
    mode ENUM('polling', 'webhook') NOT NULL DEFAULT 'polling',
    webhook_url VARCHAR(2048) NULL,
    -- getUpdates offset: the last update_id seen plus one.
    update_offset BIGINT NOT NULL DEFAULT 0,
    updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (instance_id),
    CONSTRAINT telegram_instances_instance FOREIGN KEY (instance_id) REFERENCES instances (id)
        ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
