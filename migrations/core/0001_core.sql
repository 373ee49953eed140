-- switchboard core schema, version 1.
--
-- How migration files are run (host/migrate.c), and so how to write them:
--   * A statement ends at a line whose last non-blank character is ';'.
--     Nothing else is parsed: never end a line with ';' inside a statement
--     (string literals, stored program bodies), and use no DELIMITER.
--   * Lines whose first non-blank characters are '--' are comments and are
--     dropped. Blank lines are ignored.
--   * Each statement runs on its own. MariaDB commits DDL immediately, so a
--     file that fails half-way stays half-applied and is not recorded: fix
--     the schema by hand and start again. Keep each file small and simple.
--   * A file, once applied, must never change (its SHA-256 is recorded):
--     add a new NNNN_name.sql instead.
--
-- Conventions: InnoDB, utf8mb4 with the binary collation (ids, keys and
-- tokens compare byte for byte), DATETIME(6) in UTC (each connection sets
-- time_zone to +00:00), JSON as LONGTEXT checked with JSON_VALID, sealed
-- secrets (AES-256-GCM ciphertext with key id) as TEXT.

CREATE TABLE instances (
    id VARCHAR(64) NOT NULL,
    provider VARCHAR(64) NOT NULL,
    name VARCHAR(128) NOT NULL,
    settings LONGTEXT NOT NULL DEFAULT '{}' CHECK (JSON_VALID(settings)),
    secrets TEXT NULL,
    enabled TINYINT(1) NOT NULL DEFAULT 1,
    created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    UNIQUE KEY instances_provider_name (provider, name),
    KEY instances_provider_id (provider, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Small per-instance state a provider keeps between runs (cursors, tokens
-- that are not secrets).
CREATE TABLE instance_kv (
    instance_id VARCHAR(64) NOT NULL,
    k VARCHAR(128) NOT NULL,
    v MEDIUMTEXT NOT NULL,
    -- Writes are applied behind the loop by several workers; seq keeps a
    -- late write from undoing a newer one. No foreign key: instances from
    -- the config file keep state here too, and are not in instances.
    seq BIGINT NOT NULL DEFAULT 0,
    updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (instance_id, k)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Instances from the config file are not rows of instances, yet they send
-- and receive too: the tables below carry instance_id without a foreign
-- key, and deleting an API instance deletes its rows explicitly.

-- Every message, both directions. Listing is newest first with a
-- (created_at, id) cursor: ORDER BY created_at DESC, id DESC.
CREATE TABLE messages (
    id VARCHAR(40) NOT NULL,
    instance_id VARCHAR(64) NOT NULL,
    direction ENUM('out', 'in') NOT NULL,
    state ENUM('queued', 'sending', 'sent', 'delivered', 'read', 'failed', 'received') NOT NULL,
    recipient VARCHAR(255) NULL,
    sender VARCHAR(255) NULL,
    body LONGTEXT NOT NULL CHECK (JSON_VALID(body)),
    provider_message_id VARCHAR(255) NULL,
    degraded LONGTEXT NULL CHECK (JSON_VALID(degraded)),
    attempts INT NOT NULL DEFAULT 0,
    last_error TEXT NULL,
    idempotency_key VARCHAR(255) NULL,
    created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    KEY messages_instance_created (instance_id, created_at DESC, id DESC),
    UNIQUE KEY messages_instance_idempotency (instance_id, idempotency_key),
    KEY messages_provider_message (provider_message_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Raw inbound webhooks, stored before they are processed; a provider's
-- redelivery of the same event id is a duplicate key (NULL ids never are).
CREATE TABLE webhook_events (
    id BIGINT NOT NULL AUTO_INCREMENT,
    instance_id VARCHAR(64) NOT NULL,
    provider VARCHAR(64) NOT NULL,
    provider_event_id VARCHAR(255) NULL,
    payload LONGBLOB NOT NULL,
    received_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    processed_at DATETIME(6) NULL,
    PRIMARY KEY (id),
    UNIQUE KEY webhook_events_provider_event (instance_id, provider_event_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Outbound messages waiting to be (re)sent. A sender claims a row by
-- setting locked_until, so a crashed sender's claim runs out by itself.
CREATE TABLE outbox (
    message_id VARCHAR(40) NOT NULL,
    instance_id VARCHAR(64) NOT NULL,
    due_at DATETIME(6) NOT NULL,
    attempts INT NOT NULL DEFAULT 0,
    locked_until DATETIME(6) NULL,
    PRIMARY KEY (message_id),
    KEY outbox_due (due_at),
    CONSTRAINT outbox_message FOREIGN KEY (message_id) REFERENCES messages (id)
        ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Customer webhooks: where to POST which events. secret is sealed.
CREATE TABLE subscriptions (
    id VARCHAR(40) NOT NULL,
    url VARCHAR(2048) NOT NULL,
    secret TEXT NOT NULL,
    events LONGTEXT NOT NULL CHECK (JSON_VALID(events)),
    instance_filter LONGTEXT NULL CHECK (JSON_VALID(instance_filter)),
    enabled TINYINT(1) NOT NULL DEFAULT 1,
    created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- One row per (subscription, event) to deliver; payload is the JSON body
-- to POST, kept so a retry sends exactly what the first attempt did.
CREATE TABLE subscription_deliveries (
    id BIGINT NOT NULL AUTO_INCREMENT,
    subscription_id VARCHAR(40) NOT NULL,
    event_id VARCHAR(64) NOT NULL,
    payload LONGTEXT NOT NULL CHECK (JSON_VALID(payload)),
    state ENUM('pending', 'delivered', 'failed') NOT NULL DEFAULT 'pending',
    attempts INT NOT NULL DEFAULT 0,
    next_attempt_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    last_status INT NULL,
    created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    UNIQUE KEY subscription_deliveries_event (subscription_id, event_id),
    KEY subscription_deliveries_due (state, next_attempt_at),
    CONSTRAINT subscription_deliveries_subscription FOREIGN KEY (subscription_id)
        REFERENCES subscriptions (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- API keys: the key's first 12 characters find the row, hash is the hex
-- SHA-256 of the whole key. The key itself is never stored.
CREATE TABLE api_keys (
    id VARCHAR(40) NOT NULL,
    prefix CHAR(12) NOT NULL,
    hash CHAR(64) NOT NULL,
    label VARCHAR(255) NOT NULL DEFAULT '',
    role ENUM('admin', 'instance') NOT NULL,
    instance_ids LONGTEXT NULL CHECK (JSON_VALID(instance_ids)),
    created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    last_used_at DATETIME(6) NULL,
    revoked_at DATETIME(6) NULL,
    PRIMARY KEY (id),
    UNIQUE KEY api_keys_prefix (prefix)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
