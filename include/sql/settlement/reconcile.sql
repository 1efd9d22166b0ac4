-- Revenue-split rows the platform already wrote for due licences: reused when they match our
-- parts to the cent, otherwise the licence is held with a split_mismatch finding. ``paid``: the
-- platform already paid the contributor for it (post_sales records that payment).
CREATE TEMP TABLE existing ON COMMIT DROP AS
SELECT rs.license_id, rs.contributor_id, count(*) AS n,
       sum(csl_ops.minor_units(rs.amount, po.exponent)) AS amount_raw, bool_and(rs.status = 'paid') AS paid
FROM revenue_splits rs
JOIN pool po ON po.license_id = rs.license_id
GROUP BY rs.license_id, rs.contributor_id;

INSERT INTO held
SELECT license_id, 'split_mismatch', jsonb_build_object('existing', ex, 'computed', co)
FROM (
    SELECT coalesce(e.license_id, p.license_id) AS license_id,
           jsonb_agg(jsonb_build_object('contributor', e.contributor_id, 'cents', e.amount_raw, 'rows', e.n))
               FILTER (WHERE e.license_id IS NOT NULL) AS ex,
           jsonb_agg(jsonb_build_object('contributor', p.contributor_id, 'cents', p.amount_minor))
               FILTER (WHERE p.license_id IS NOT NULL) AS co,
           bool_or(e.license_id IS NULL OR p.license_id IS NULL OR e.n > 1
                   OR e.amount_raw <> p.amount_minor) AS differs
    FROM existing e
    FULL JOIN (SELECT * FROM parts WHERE license_id IN (SELECT license_id FROM existing)) p
           ON p.license_id = e.license_id AND p.contributor_id = e.contributor_id
    GROUP BY 1
) cmp
WHERE differs;

DELETE FROM pool WHERE license_id IN (SELECT license_id FROM held WHERE kind = 'split_mismatch');
DELETE FROM parts WHERE license_id IN (SELECT license_id FROM held WHERE kind = 'split_mismatch');
