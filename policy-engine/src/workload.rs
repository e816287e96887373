//! A realistic rule set and statement corpus for measurement tools: the example policies plus
//! generated rules in common shapes, and pgbench, TPC-C-like, ORM-generated and large
//! statements. Shared by `bench policy` and the `decide_rate` example so both measure the same
//! thing. Not used by the gateway.

use std::path::PathBuf;

pub const EXAMPLES: &[&str] = &[
    include_str!("../../appliance/examples/policies/00-access.toml"),
    include_str!("../../appliance/examples/policies/10-sql-guardrails.toml"),
    include_str!("../../appliance/examples/policies/20-http-k8s-ssh.toml"),
    include_str!("../../appliance/examples/policies/30-masking.toml"),
];

/// Generated rules in realistic shapes, so the rule count reaches the target.
pub fn generated_rules(n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        let rule = match i % 5 {
            0 => format!(
                "[[rule]]\nid = \"gen-deny-table-{i}\"\nconnections = [\"orders-db\", \"app-{i}-*\"]\nmatch.tables = [\"secret_{i}\", \"*.secret_{i}\"]\naction = \"deny\"\n"
            ),
            1 => format!(
                "[[rule]]\nid = \"gen-review-schema-{i}\"\nmatch.statement = [\"update\", \"delete\"]\nmatch.schemas = [\"tenant_{i}\"]\naction = \"review\"\nreview = {{ approvers = [\"dba\"] }}\n"
            ),
            2 => format!(
                "[[rule]]\nid = \"gen-regex-{i}\"\nconnections = [\"orders-db\"]\nmatch.regex = ['\\bfn_{i}\\b']\naction = \"deny\"\n"
            ),
            3 => format!(
                "[[rule]]\nid = \"gen-group-allow-{i}\"\ngroups = [\"team-{i}\", \"engineering\"]\nmatch.statement = [\"select\"]\nmatch.tables = [\"report_{i}_*\"]\naction = \"allow\"\n"
            ),
            _ => format!(
                "[[rule]]\nid = \"gen-other-conn-{i}\"\nconnections = [\"warehouse-{i}\"]\nmatch.statement = [\"drop\", \"truncate\"]\naction = \"deny\"\n"
            ),
        };
        s.push_str(&rule);
        s.push('\n');
    }
    s
}

pub fn corpus() -> Vec<(&'static str, String)> {
    let mut c: Vec<(&'static str, String)> = vec![
        // pgbench (TPC-B-like) transaction.
        ("pgbench", "BEGIN;".into()),
        ("pgbench", "UPDATE pgbench_accounts SET abalance = abalance + -4321 WHERE aid = 73021;".into()),
        ("pgbench", "SELECT abalance FROM pgbench_accounts WHERE aid = 73021;".into()),
        ("pgbench", "UPDATE pgbench_tellers SET tbalance = tbalance + -4321 WHERE tid = 7;".into()),
        ("pgbench", "UPDATE pgbench_branches SET bbalance = bbalance + -4321 WHERE bid = 1;".into()),
        ("pgbench", "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (7, 1, 73021, -4321, CURRENT_TIMESTAMP);".into()),
        ("pgbench", "END;".into()),
        // TPC-C-like.
        ("tpcc", "SELECT c_discount, c_last, c_credit, w_tax FROM customer, warehouse WHERE w_id = 1 AND c_w_id = w_id AND c_d_id = 3 AND c_id = 1234".into()),
        ("tpcc", "SELECT d_next_o_id, d_tax FROM district WHERE d_id = 3 AND d_w_id = 1 FOR UPDATE".into()),
        ("tpcc", "UPDATE district SET d_next_o_id = d_next_o_id + 1 WHERE d_id = 3 AND d_w_id = 1".into()),
        ("tpcc", "INSERT INTO oorder (o_id, o_d_id, o_w_id, o_c_id, o_entry_d, o_ol_cnt, o_all_local) VALUES (3001, 3, 1, 1234, '2026-11-26 10:00:00', 10, 1)".into()),
        ("tpcc", "SELECT i_price, i_name, i_data FROM item WHERE i_id = 88231".into()),
        ("tpcc", "SELECT s_quantity, s_data, s_dist_03 FROM stock WHERE s_i_id = 88231 AND s_w_id = 1 FOR UPDATE".into()),
        ("tpcc", "DELETE FROM new_order WHERE no_o_id = 2101 AND no_d_id = 3 AND no_w_id = 1".into()),
        ("tpcc", "SELECT count(DISTINCT (s_i_id)) AS stock_count FROM order_line, stock WHERE ol_w_id = 1 AND ol_d_id = 3 AND ol_o_id < 3001 AND ol_o_id >= 2981 AND s_w_id = 1 AND s_i_id = ol_i_id AND s_quantity < 15".into()),
        // ORM-generated.
        ("orm", "SELECT \"auth_user\".\"id\", \"auth_user\".\"password\", \"auth_user\".\"last_login\", \"auth_user\".\"is_superuser\", \"auth_user\".\"username\", \"auth_user\".\"email\" FROM \"auth_user\" WHERE \"auth_user\".\"id\" = 42 LIMIT 21".into()),
        ("orm", "INSERT INTO \"orders\" (\"customer_id\", \"total\", \"created_at\") VALUES (17, 99.5, '2026-11-26T10:00:00Z') RETURNING \"orders\".\"id\"".into()),
        ("orm", "UPDATE \"orders\" SET \"status\" = 'shipped', \"updated_at\" = '2026-11-26T10:00:00Z' WHERE \"orders\".\"id\" = 991".into()),
        ("orm", "SELECT \"orders\".\"id\", \"orders\".\"total\", \"customers\".\"email\" FROM \"orders\" INNER JOIN \"customers\" ON (\"orders\".\"customer_id\" = \"customers\".\"id\") WHERE (\"orders\".\"status\" IN ('new', 'paid') AND \"orders\".\"created_at\" >= '2026-11-01') ORDER BY \"orders\".\"created_at\" DESC LIMIT 50 OFFSET 100".into()),
        ("orm", "SELECT COUNT(*) AS \"__count\" FROM \"orders\" WHERE \"orders\".\"customer_id\" = 17".into()),
        // Hibernate-style entity load with a join fetch (~0.6 KB), and a Rails-style eager
        // load with a subquery (~0.8 KB): the sizes real ORMs produce, near the 1 KB bound.
        ("orm", "select order0_.id as id1_3_0_, customer1_.id as id1_1_1_, order0_.created_at as created_2_3_0_, order0_.customer_id as customer5_3_0_, order0_.status as status3_3_0_, order0_.total as total4_3_0_, order0_.updated_at as updated_6_3_0_, order0_.shipping_address as shipping7_3_0_, customer1_.email as email2_1_1_, customer1_.name as name3_1_1_, customer1_.phone as phone4_1_1_, customer1_.created_at as created_5_1_1_ from orders order0_ inner join customers customer1_ on order0_.customer_id=customer1_.id where order0_.status in (? , ?) and order0_.created_at>=? and customer1_.email like ? order by order0_.created_at desc limit ?".into()),
        ("orm", "SELECT \"line_items\".\"id\", \"line_items\".\"order_id\", \"line_items\".\"product_id\", \"line_items\".\"quantity\", \"line_items\".\"unit_price\", \"line_items\".\"discount\", \"line_items\".\"created_at\", \"line_items\".\"updated_at\", \"products\".\"id\" AS t1_r0, \"products\".\"sku\" AS t1_r1, \"products\".\"name\" AS t1_r2, \"products\".\"description\" AS t1_r3, \"products\".\"price\" AS t1_r4 FROM \"line_items\" LEFT OUTER JOIN \"products\" ON \"products\".\"id\" = \"line_items\".\"product_id\" WHERE \"line_items\".\"order_id\" IN (SELECT \"orders\".\"id\" FROM \"orders\" WHERE \"orders\".\"customer_id\" = $1 AND \"orders\".\"status\" IN ('paid', 'shipped', 'delivered') AND \"orders\".\"created_at\" BETWEEN '2026-01-01 00:00:00' AND '2026-11-26 23:59:59') AND \"products\".\"archived_at\" IS NULL ORDER BY \"line_items\".\"created_at\" ASC, \"line_items\".\"id\" ASC LIMIT 200 OFFSET 0".into()),
        // Guardrail hits.
        ("guardrail", "DELETE FROM orders".into()),
        ("guardrail", "DROP TABLE orders".into()),
        ("guardrail", "WITH gone AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM gone".into()),
        ("guardrail", "SELECT token FROM public.payment_tokens WHERE id = 1".into()),
        ("guardrail", "SELECT 1; SELECT 2".into()),
        ("tiny", "SELECT 1".into()),
    ];
    // Large statements: a 10 KB IN list and a 4 KB multi-row insert.
    let ids: Vec<String> = (0..1800).map(|i| (100_000 + i).to_string()).collect();
    let mut big = format!(
        "SELECT id, total FROM orders WHERE id IN ({})",
        ids.join(", ")
    );
    big.truncate(10_200);
    if let Some(p) = big.rfind(',') {
        big.truncate(p);
    }
    big.push(')');
    c.push(("large", big));
    let rows: Vec<String> = (0..100)
        .map(|i| format!("({i}, 'item-{i}', {i}.99)"))
        .collect();
    c.push((
        "large",
        format!(
            "INSERT INTO items (id, name, price) VALUES {}",
            rows.join(", ")
        ),
    ));
    c
}

/// The example policies followed by `generated` generated rules, as `(file name, text)` pairs
/// for [`crate::policy::compile_sources`].
pub fn sources(generated: usize) -> Vec<(PathBuf, String)> {
    let mut sources: Vec<(PathBuf, String)> = EXAMPLES
        .iter()
        .enumerate()
        .map(|(i, s)| (PathBuf::from(format!("{i:02}.toml")), (*s).to_owned()))
        .collect();
    sources.push((
        PathBuf::from("90-generated.toml"),
        generated_rules(generated),
    ));
    sources
}
