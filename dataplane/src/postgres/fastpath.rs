//! Fast-path function calls (`FunctionCall`, message `F`): the client names a function by OID,
//! with no SQL text a rule could match.
//!
//! The gateway lets through only the functions whose OIDs are pinned in PostgreSQL's own
//! catalog (`pg_proc.dat`, identical in every release since they were added): the large-object
//! API that libpq's `lo_*` calls and psql's `\lo_import` / `\lo_export` use. Each call is
//! decided as the SQL statement that does the same thing, `SELECT pg_catalog.<name>(...)`, so
//! the policy sees the same statement kind it would see for the SQL form (for example
//! `lo_import` is an admin function). Any other OID (a user function, whose OID differs per
//! database) is refused: nothing could tell the policy what it does.

use policy_engine::mask::ValueKind;

/// Built-in functions callable over the fast path: pinned OID and name.
const PINNED: [(u32, &str); 20] = [
    (715, "lo_create"),
    (764, "lo_import"),
    (765, "lo_export"),
    (767, "lo_import"),
    (952, "lo_open"),
    (953, "lo_close"),
    (954, "loread"),
    (955, "lowrite"),
    (956, "lo_lseek"),
    (957, "lo_creat"),
    (958, "lo_tell"),
    (964, "lo_unlink"),
    (1004, "lo_truncate"),
    (3170, "lo_lseek64"),
    (3171, "lo_tell64"),
    (3172, "lo_truncate64"),
    (3457, "lo_from_bytea"),
    (3458, "lo_get"),
    (3459, "lo_get"),
    (3460, "lo_put"),
];

/// The name of the pinned built-in function with this OID.
pub fn function_name(oid: u32) -> Option<&'static str> {
    PINNED
        .binary_search_by_key(&oid, |&(o, _)| o)
        .ok()
        .and_then(|i| PINNED.get(i))
        .map(|&(_, name)| name)
}

/// How the result of `name` may be masked: `bytea` results (large-object data) can be
/// rewritten and stay valid; any other result (binary integers) can only be withheld.
pub fn result_kind(name: &str) -> ValueKind {
    match name {
        "loread" | "lo_get" => ValueKind::Binary,
        _ => ValueKind::Other,
    }
}

/// The SQL statement a fast-path call of `name` is decided and recorded as.
pub fn equivalent_sql(name: &str) -> String {
    format!("SELECT pg_catalog.{name}(...)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_table_is_sorted_so_lookups_find_every_entry() {
        assert!(PINNED.windows(2).all(|w| w[0].0 < w[1].0));
        for (oid, name) in PINNED {
            assert_eq!(function_name(oid), Some(name));
        }
    }

    #[test]
    fn unknown_oids_have_no_name() {
        for oid in [0, 1, 714, 16_384, u32::MAX] {
            assert_eq!(function_name(oid), None);
        }
    }
}
