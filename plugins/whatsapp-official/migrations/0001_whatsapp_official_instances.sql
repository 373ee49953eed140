-- WhatsApp Business Cloud API instances.
-- Split and run by host/migrate.c: see migrations/core/0001_core.sql for the
-- rules. Secrets (tokens, app secrets) never go here: they are sealed in
-- instances.secrets. Non-secret provider state only.

CREATE TABLE whatsapp_official_instances (
    instance_id VARCHAR(64) NOT NULL,
    phone_number_id VARCHAR(64) NULL,
    waba_id VARCHAR(64) NULL,
    graph_version VARCHAR(16) NULL,
    updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (instance_id),
    -- Inbound webhooks name the phone number id: route them to the instance.
    KEY whatsapp_official_instances_phone (phone_number_id),
    CONSTRAINT whatsapp_official_instances_instance FOREIGN KEY (instance_id)
        REFERENCES instances (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
