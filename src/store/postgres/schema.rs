//! The store's tables: migrations embedded in the binary, applied at open by whichever
//! instance gets there first, and a database newer than this binary refused.

use super::db::Db;
use crate::store::StoreError;

/// Every migration, in order; the schema's version is how many have been applied.
const MIGRATIONS: &[(&str, &str)] = &[("0001_store", include_str!("migrations/0001_store.sql"))];

/// Brings the database's schema up to this binary's, under a lock so that instances
/// starting together apply each migration once; refuses a schema newer than it knows.
pub fn migrate(db: &Db) -> Result<u32, StoreError> {
    let known = MIGRATIONS.len() as i32;
    db.transaction(|tx| {
        tx.lock("nightshift schema")?;
        tx.execute(
            "CREATE TABLE IF NOT EXISTS nightshift_schema (version integer NOT NULL, name text NOT NULL, \
             applied_at timestamptz NOT NULL DEFAULT now())",
            &[],
        )?;
        let row = tx.query_one("SELECT coalesce(max(version), 0) FROM nightshift_schema", &[])?;
        let current: i32 = row.get(0);
        if current > known {
            return Err(newer(&db.shown, current, known));
        }
        for (index, (name, sql)) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            let version = index as i32 + 1;
            tx.batch(sql).map_err(|error| StoreError::Open {
                dir: db.shown.clone().into(),
                cause: format!("migration {name} failed: {error}"),
            })?;
            tx.execute("INSERT INTO nightshift_schema (version, name) VALUES ($1, $2)", &[&version, name])?;
            tracing::info!(database = %db.shown, migration = name, version, "Applied a store migration");
        }
        Ok(known as u32)
    })
}

fn newer(shown: &str, current: i32, known: i32) -> StoreError {
    StoreError::Open {
        dir: shown.into(),
        cause: format!(
            "the database's store schema is version {current}, newer than this nightshift knows ({known}): \
             another instance runs a newer nightshift; upgrade this one before starting it"
        ),
    }
}

#[cfg(test)]
fn version_known() -> u32 {
    MIGRATIONS.len() as u32
}

#[cfg(test)]
mod tests {
    use super::super::cluster::Cluster;
    use super::*;

    #[test]
    fn migrations_apply_once_and_a_newer_schema_is_refused_with_what_to_do() {
        let cluster = Cluster::start().expect("a throwaway PostgreSQL cluster starts");
        let url = cluster.database("schema").expect("a database");
        let db = Db::new(&url).expect("a URL");
        assert_eq!(migrate(&db).expect("the first start migrates"), version_known());
        assert_eq!(migrate(&db).expect("a second start finds it done"), version_known());
        db.transaction(|tx| {
            tx.execute(
                "INSERT INTO nightshift_schema (version, name) VALUES ($1, 'from the future')",
                &[&(version_known() as i32 + 1)],
            )
        })
        .expect("a newer binary's migration");
        let refused = migrate(&db).expect_err("a newer schema is refused").to_string();
        assert!(refused.contains("newer than this nightshift knows") && refused.contains("upgrade"), "{refused}");
    }
}
