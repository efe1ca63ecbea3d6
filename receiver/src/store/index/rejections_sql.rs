//! The SQL of the rejected-commits table (migration 0004), shared by the
//! SQLite and PostgreSQL backends like `sql.rs`: plain statements both run.

/// Rows of one upsert of rejections: 5 parameters each, far below either
/// database's limit per statement.
pub(crate) const REJECTIONS_PER_STATEMENT: usize = 1000;

/// Adds a flushed tally to the stored one. `excluded` is the row that was
/// not inserted; CASE rather than MIN/LEAST, which the two databases spell
/// differently.
pub(crate) const UPSERT_REJECTION: &str = " ON CONFLICT (commit_id, device) DO UPDATE SET \
     attempts = rejected_commits.attempts + excluded.attempts, \
     first_seen = CASE WHEN excluded.first_seen < rejected_commits.first_seen \
                  THEN excluded.first_seen ELSE rejected_commits.first_seen END, \
     last_seen = CASE WHEN excluded.last_seen > rejected_commits.last_seen \
                 THEN excluded.last_seen ELSE rejected_commits.last_seen END";

/// The middle of the statement that keeps only the newest rows of each
/// device of a flush: `DELETE … WHERE device IN (<devices>)` + this +
/// `<devices>) ) ranked WHERE n <= <keep>)`. The device index
/// (migration 0004) serves both lists.
pub(crate) const KEEP_NEWEST_OF_DEVICES: &str = ") AND (commit_id, device) NOT IN \
     (SELECT commit_id, device FROM (SELECT commit_id, device, ROW_NUMBER() OVER \
     (PARTITION BY device ORDER BY last_seen DESC, commit_id) AS n \
     FROM rejected_commits WHERE device IN (";

/// Rejections seen since `$1`, of commits not (or no longer) on the
/// allow-list, newest first.
pub(crate) const LIST_REJECTIONS: &str = "SELECT r.commit_id, r.device, r.attempts, \
     r.first_seen, r.last_seen FROM rejected_commits r WHERE r.last_seen >= $1 \
     AND NOT EXISTS (SELECT 1 FROM commits c WHERE c.commit_id = r.commit_id) \
     ORDER BY r.last_seen DESC, r.commit_id, r.device LIMIT $2";

/// Moves a renamed device's rejected commits to its new name.
pub(crate) const RENAME_REJECTIONS: &str = "UPDATE rejected_commits SET device = $2 \
     WHERE device = $1 AND NOT EXISTS (SELECT 1 FROM rejected_commits r \
     WHERE r.device = $2 AND r.commit_id = rejected_commits.commit_id)";
