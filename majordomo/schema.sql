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

-- Added with budgets: what the request counted against its key's budget.
-- Its total_cost when its usage is complete; when the provider may have
-- billed it but its cost is unknown (a stream cut before its usage), the
-- upper bound that was reserved for it.  NULL for keys without a budget.
ALTER TABLE llm_requests ADD COLUMN IF NOT EXISTS budget_cost numeric;

-- Policies (`majordomo keys policy`): at most one per key.  A budget needs both
-- budget_usd and budget_period; per_metadata makes the budget and the rate
-- limits apply to each value of that metadata name (canonical spelling).
CREATE TABLE IF NOT EXISTS key_policies (
    majordomo_api_key_id    uuid PRIMARY KEY REFERENCES api_keys (id) ON DELETE CASCADE,
    budget_usd              numeric CHECK (budget_usd >= 0),
    budget_period           text CHECK (budget_period IN ('day', 'week', 'month', 'total')),
    per_metadata            text,
    allow_models            text[],
    deny_models             text[],
    allow_unpriced          boolean NOT NULL DEFAULT false,
    rpm                     integer CHECK (rpm > 0),
    tpm                     bigint CHECK (tpm > 0),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    CHECK ((budget_usd IS NULL) = (budget_period IS NULL))
);

-- One row per key, bucket (the per_metadata value; '' for none) and window.
-- kind is a budget period (day, week, month, total: calendar windows in UTC)
-- or a rate limit (rpm, tpm: calendar minutes).  For a budget, spent is
-- SUM(coalesce(budget_cost, total_cost)) of the window's rows (their
-- SUM(total_cost) when every cost is known), kept by the log writer's batch
-- statement.  leases holds each running gateway's share, leased atomically:
-- {"<holder>": {"a": amount, "x": expiry as epoch seconds}}.  The batch
-- statement moves a row's cost from its gateway's lease to spent, so
-- spent + the leases never exceeds the limit but by what estimates missed.
CREATE TABLE IF NOT EXISTS policy_windows (
    majordomo_api_key_id    uuid NOT NULL,
    bucket                  text NOT NULL,
    kind                    text NOT NULL,
    window_start            timestamptz NOT NULL,
    spent                   numeric NOT NULL DEFAULT 0,
    leases                  jsonb NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (majordomo_api_key_id, bucket, kind, window_start)
);

-- Finished rate-limit windows are deleted by the gateways (policy/leases.py).
CREATE INDEX IF NOT EXISTS policy_windows_rate_idx ON policy_windows (window_start)
    WHERE kind IN ('rpm', 'tpm');

-- The calendar window (UTC) of kind `kind` that `at` falls in.
CREATE OR REPLACE FUNCTION majordomo_window_start(kind text, at timestamptz)
RETURNS timestamptz LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE kind
        WHEN 'total' THEN timestamptz '1970-01-01 00:00:00+00'
        WHEN 'rpm' THEN date_trunc('minute', at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
        WHEN 'tpm' THEN date_trunc('minute', at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
        ELSE date_trunc(kind, at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
    END
$$;

-- The leases after the rows of one batch charged their gateways: each
-- holder's amount less what `charges` ({"<holder>": cost}) says it spent.
CREATE OR REPLACE FUNCTION majordomo_leases_charged(leases jsonb, charges jsonb)
RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(jsonb_object_agg(holder, CASE
        WHEN charges ? holder THEN jsonb_set(
            lease, '{a}', to_jsonb((lease->>'a')::numeric - (charges->>holder)::numeric))
        ELSE lease END), '{}'::jsonb)
    FROM jsonb_each(leases) AS e(holder, lease)
$$;

-- Lease: grow `holder`'s share of one window by up to `want` (at least
-- `need`, or nothing) out of what the limit leaves: limit - spent - every
-- live lease.  Leases of other holders past their expiry are dropped first.
-- A negative `want` gives that much back.  A `base` that is not NULL
-- replaces the holder's share first (a gateway that lost track of its lease
-- says what it still holds).  Returns the holder's share afterwards, what was
-- granted, and the window's spent.  The row lock serialises every lease and
-- every batch on the window.
CREATE OR REPLACE FUNCTION majordomo_lease(
    p_key uuid, p_bucket text, p_kind text, p_window timestamptz, p_holder text,
    p_limit numeric, p_want numeric, p_need numeric, p_ttl double precision,
    p_base numeric)
RETURNS TABLE (share numeric, granted numeric, spent numeric)
LANGUAGE plpgsql AS $$
DECLARE
    now_epoch double precision := extract(epoch FROM clock_timestamp());
    w policy_windows;
    live jsonb;
    others numeric;
    mine numeric;
    give numeric;
BEGIN
    -- A question that would wait long for the row is better answered "unavailable".
    PERFORM set_config('lock_timeout', '1500ms', true);
    INSERT INTO policy_windows (majordomo_api_key_id, bucket, kind, window_start)
    VALUES (p_key, p_bucket, p_kind, p_window) ON CONFLICT DO NOTHING;
    SELECT * INTO w FROM policy_windows
    WHERE majordomo_api_key_id = p_key AND bucket = p_bucket AND kind = p_kind
      AND window_start = p_window
    FOR UPDATE;
    SELECT coalesce(jsonb_object_agg(h, l), '{}'::jsonb) INTO live
    FROM jsonb_each(w.leases) AS e(h, l)
    WHERE h = p_holder OR (l->>'x')::double precision >= now_epoch;
    SELECT coalesce(sum((l->>'a')::numeric), 0) INTO others
    FROM jsonb_each(live) AS e(h, l) WHERE h <> p_holder;
    mine := coalesce(p_base, (live->p_holder->>'a')::numeric, 0);
    IF p_want < 0 THEN
        give := p_want;
    ELSIF p_limit - w.spent - others - mine >= p_need THEN
        give := least(p_want, p_limit - w.spent - others - mine);
    ELSE
        give := 0;
    END IF;
    live := jsonb_set(live, ARRAY[p_holder], jsonb_build_object(
        'a', mine + give, 'x', now_epoch + p_ttl));
    UPDATE policy_windows SET leases = live
    WHERE majordomo_api_key_id = p_key AND bucket = p_bucket AND kind = p_kind
      AND window_start = p_window;
    RETURN QUERY SELECT mine + give, give, w.spent;
END
$$;

-- Proxy keys: an mdm_pk_ key given to a customer or an app, under a
-- Majordomo key; the gateway swaps in the provider key mapped to it.  Only the
-- SHA-256 hex of the proxy key is stored.
CREATE TABLE IF NOT EXISTS proxy_keys (
    id uuid PRIMARY KEY,
    majordomo_api_key_id uuid NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    name text NOT NULL,
    description text,
    key_hash text NOT NULL UNIQUE,
    is_active boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz,
    last_used_at timestamptz,
    request_count bigint NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS proxy_keys_api_key_idx ON proxy_keys (majordomo_api_key_id);

-- A proxy key's provider keys, sealed with AES-256-GCM (majordomo/vault.py): the
-- associated data is the row's proxy key id and provider, so a secret cannot be
-- moved to another row; key_fingerprint names the encryption key that sealed it.
CREATE TABLE IF NOT EXISTS proxy_key_providers (
    proxy_key_id uuid NOT NULL REFERENCES proxy_keys (id) ON DELETE CASCADE,
    provider text NOT NULL CHECK (provider IN ('openai', 'anthropic', 'gemini', 'azure')),
    secret bytea NOT NULL,
    key_fingerprint text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (proxy_key_id, provider)
);

ALTER TABLE llm_requests ADD COLUMN IF NOT EXISTS proxy_key_id uuid;
