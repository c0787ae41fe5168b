-- Majordomo Gateway schema.  Idempotent: safe to apply again on every upgrade
-- (`majordomo db init` or `psql -U postgres -d majordomo -f schema.sql`).

CREATE TABLE IF NOT EXISTS api_keys (
    id              uuid PRIMARY KEY,
    name            text NOT NULL,
    description     text,
    key_hash        text NOT NULL UNIQUE,          -- SHA-256 hex of the plaintext key; the key itself is never stored
    is_active       boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz,
    last_used_at    timestamptz,
    request_count   bigint NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS llm_requests (
    id                          uuid PRIMARY KEY,          -- UUIDv7: time-ordered, = X-Majordomo-Request-Id
    created_at                  timestamptz NOT NULL,      -- when the request arrived at the gateway
    responded_at                timestamptz,               -- when the last byte was sent
    majordomo_api_key_id        uuid,
    provider                    text NOT NULL,
    provider_api_key_hash       text,                      -- SHA-256 hex of the provider key; never the key
    provider_api_key_alias      text,
    method                      text NOT NULL,
    path                        text NOT NULL,             -- secrets (key=) redacted
    stream                      boolean NOT NULL DEFAULT false,
    status_code                 integer,
    error_message               text,
    model_requested             text,
    model                       text,                      -- the model the provider reports having used
    service_tier                text,
    usage_status                text NOT NULL,
    input_tokens                bigint,                    -- every billed input token (uncached + cache reads + writes)
    output_tokens               bigint,                    -- every billed output token (incl. reasoning, audio)
    cached_tokens               bigint,
    cache_creation_tokens       bigint,
    cache_creation_5m_tokens    bigint,
    cache_creation_1h_tokens    bigint,
    reasoning_tokens            bigint,
    input_audio_tokens          bigint,
    output_audio_tokens         bigint,
    tool_use_prompt_tokens      bigint,
    web_search_requests         bigint,
    input_cost                  numeric,                   -- exact USD, never rounded
    output_cost                 numeric,
    total_cost                  numeric,
    pricing_key                 text,
    pricing_tier                text,
    price_source                text,
    raw_usage                   jsonb,                     -- the provider's usage JSON, for re-pricing
    ttfb_ms                     double precision,          -- upstream time to first byte
    duration_ms                 double precision,          -- arrival to last byte
    raw_metadata                jsonb NOT NULL DEFAULT '{}'::jsonb,
    indexed_metadata            jsonb NOT NULL DEFAULT '{}'::jsonb,
    s3_key                      text,
    request_body                text,
    response_body               text
);

CREATE INDEX IF NOT EXISTS llm_requests_created_at_idx ON llm_requests (created_at);
CREATE INDEX IF NOT EXISTS llm_requests_key_created_at_idx ON llm_requests (majordomo_api_key_id, created_at);
CREATE INDEX IF NOT EXISTS llm_requests_model_idx ON llm_requests (model);
CREATE INDEX IF NOT EXISTS llm_requests_indexed_metadata_idx ON llm_requests USING gin (indexed_metadata);

CREATE TABLE IF NOT EXISTS llm_requests_metadata_keys (
    id                      bigserial PRIMARY KEY,
    majordomo_api_key_id    uuid NOT NULL,
    key_name                text NOT NULL,
    is_active               boolean NOT NULL DEFAULT false,   -- copied into indexed_metadata when true
    request_count           bigint NOT NULL DEFAULT 0,
    last_seen_at            timestamptz,
    created_at              timestamptz NOT NULL DEFAULT now(),
    UNIQUE (majordomo_api_key_id, key_name)
);

-- Added with metadata activation: a HyperLogLog sketch (1024 registers) of the
-- distinct values each metadata name has had, per API key.
ALTER TABLE llm_requests_metadata_keys ADD COLUMN IF NOT EXISTS hll smallint[];

-- Register-wise maximum of two HyperLogLog sketches (NULL is the empty sketch).
CREATE OR REPLACE FUNCTION majordomo_hll_merge(a smallint[], b smallint[])
RETURNS smallint[] LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN a IS NULL THEN b
        WHEN b IS NULL THEN a
        ELSE ARRAY(
            SELECT greatest(x, y)::smallint
            FROM unnest(a, b) WITH ORDINALITY AS t(x, y, i) ORDER BY i)
    END
$$;
