# -*- test-case-name: tests.test_logwriter,tests.test_policy_spend -*-
"""
The one statement that writes a batch of request records.

Everything derived (key and proxy key counters, the metadata registry and its HyperLogLog
sketches, the budget windows' spent) comes from the rows this statement
actually inserted (C{ON CONFLICT (id) DO NOTHING ... RETURNING}), so a
replayed batch changes nothing and the counters always agree with the rows.

HLL: a value's 64-bit hash picks one of 1024 registers (low 10 bits) and sets
it to at least the position of the first 1 in the next 53 bits.

Budgets: each inserted row of a key whose policy has a budget adds what it
counted against the budget (C{budget_cost}, else its C{total_cost}) to its
window's C{spent} (its bucket is the policy's
C{per_metadata} value) and takes it off the lease of the gateway that
admitted it, named by the records' C{lease_holder}.  A batch is one spool
segment, written by one gateway run, so it has at most one holder.
"""

INSERT_BATCH = """
WITH batch AS MATERIALIZED (
    SELECT %s::jsonb AS records
), inserted AS (
    INSERT INTO llm_requests
    SELECT * FROM jsonb_populate_recordset(NULL::llm_requests, (SELECT records FROM batch))
    ON CONFLICT (id) DO NOTHING
    RETURNING majordomo_api_key_id, proxy_key_id, created_at, raw_metadata,
        coalesce(budget_cost, total_cost) AS budget_cost
), meta AS (
    SELECT i.majordomo_api_key_id AS key_id, m.key AS name, i.created_at,
           hashtextextended(m.value, 0) AS h
    FROM inserted i, jsonb_each_text(i.raw_metadata) m
    WHERE i.majordomo_api_key_id IS NOT NULL
), registers AS (
    SELECT key_id, name, (h & 1023)::int + 1 AS slot,
           max(54 - length(ltrim((h >> 10)::bit(53)::text, '0')))::smallint AS rank
    FROM meta GROUP BY 1, 2, 3
), sketches AS (
    SELECT k.key_id, k.name, ARRAY(
        SELECT coalesce(r.rank, 0)::smallint FROM generate_series(1, 1024) AS g(slot)
        LEFT JOIN registers r ON r.key_id = k.key_id AND r.name = k.name AND r.slot = g.slot
        ORDER BY g.slot) AS hll
    FROM (SELECT DISTINCT key_id, name FROM registers) k
), registry AS (
    INSERT INTO llm_requests_metadata_keys AS t
        (majordomo_api_key_id, key_name, request_count, last_seen_at, hll)
    SELECT m.key_id, m.name, count(*), max(m.created_at), min(s.hll)
    FROM meta m JOIN sketches s USING (key_id, name)
    GROUP BY m.key_id, m.name
    ON CONFLICT (majordomo_api_key_id, key_name) DO UPDATE SET
        request_count = t.request_count + excluded.request_count,
        last_seen_at = GREATEST(t.last_seen_at, excluded.last_seen_at),
        hll = majordomo_hll_merge(t.hll, excluded.hll)
), charges AS (
    SELECT i.majordomo_api_key_id AS key_id,
           coalesce(i.raw_metadata->>p.per_metadata, '') AS bucket,
           p.budget_period AS kind,
           majordomo_window_start(p.budget_period, i.created_at) AS window_start,
           sum(i.budget_cost) AS cost
    FROM inserted i JOIN key_policies p USING (majordomo_api_key_id)
    WHERE p.budget_period IS NOT NULL AND i.budget_cost IS NOT NULL
    GROUP BY 1, 2, 3, 4
), spending AS (
    INSERT INTO policy_windows AS w (majordomo_api_key_id, bucket, kind, window_start, spent)
    SELECT key_id, bucket, kind, window_start, cost FROM charges
    ON CONFLICT (majordomo_api_key_id, bucket, kind, window_start) DO UPDATE SET
        spent = w.spent + excluded.spent,
        leases = majordomo_leases_charged(w.leases, jsonb_build_object(
            coalesce((SELECT r->>'lease_holder'
                      FROM jsonb_array_elements((SELECT records FROM batch)) AS r
                      WHERE r ? 'lease_holder' LIMIT 1), ''),
            excluded.spent))
), per_proxy_key AS (
    SELECT proxy_key_id AS id, count(*) AS n, max(created_at) AS last_used
    FROM inserted WHERE proxy_key_id IS NOT NULL
    GROUP BY proxy_key_id
), proxy_key_counts AS (
    UPDATE proxy_keys SET
        request_count = proxy_keys.request_count + per_proxy_key.n,
        last_used_at = GREATEST(proxy_keys.last_used_at, per_proxy_key.last_used)
    FROM per_proxy_key WHERE proxy_keys.id = per_proxy_key.id
), per_key AS (
    SELECT majordomo_api_key_id AS id, count(*) AS n, max(created_at) AS last_used
    FROM inserted WHERE majordomo_api_key_id IS NOT NULL
    GROUP BY majordomo_api_key_id
)
UPDATE api_keys SET
    request_count = api_keys.request_count + per_key.n,
    last_used_at = GREATEST(api_keys.last_used_at, per_key.last_used)
FROM per_key WHERE api_keys.id = per_key.id
"""
