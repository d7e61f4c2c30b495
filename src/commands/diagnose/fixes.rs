//! The SQL that fixes each difference from the contract, built from the contract and the
//! embedded migrations.

use super::*;

pub(crate) fn fix_for(store: &Store, catalog: &Catalog, d: &Drift) -> Option<Fix> {
    let table = schema::table(d.table);
    let pg = matches!(store, Store::Postgres(_));
    let name = schema::qualified(store, d.table);
    let sql = |s: String, safe: bool| {
        Some(Fix {
            action: FixAction::Sql(s),
            safe,
        })
    };
    match (&d.kind, pg) {
        (DriftKind::MissingTable, _) => sql(migration_statements(store, d.table), true),
        (DriftKind::MissingColumn(c), _) => {
            let col = schema::column(table, c);
            sql(
                schema::restoring_sql(store, d)?,
                col.nullable || col.default.is_some(),
            )
        }
        (DriftKind::MissingDefault(c), true) => {
            let col = schema::column(table, c);
            sql(
                format!(
                    "ALTER TABLE {name} ALTER COLUMN \"{c}\" SET DEFAULT {};",
                    col.default.unwrap_or("NULL")
                ),
                true,
            )
        }
        (DriftKind::WrongType(c), true) => {
            let col = schema::column(table, c);
            let ty = col.pg_decl();
            let ty = ty.split_whitespace().nth(1).unwrap_or_default().to_owned();
            sql(
                format!(
                    "ALTER TABLE {name} ALTER COLUMN \"{c}\" TYPE {ty} USING \"{c}\"::{};",
                    ty.to_lowercase()
                ),
                false,
            )
        }
        (DriftKind::WrongNullability(c), true) => {
            let col = schema::column(table, c);
            let change = if col.nullable {
                "DROP NOT NULL"
            } else {
                "SET NOT NULL"
            };
            sql(
                format!("ALTER TABLE {name} ALTER COLUMN \"{c}\" {change};"),
                false,
            )
        }
        // SQLite cannot alter a column: the table is rebuilt in one transaction, every row
        // copied. Safe for a missing default (values copy unchanged), reviewed otherwise.
        (DriftKind::MissingDefault(_), false) => sql(sqlite_rebuild(store, catalog, d.table), true),
        (DriftKind::WrongType(_) | DriftKind::WrongNullability(_), false) => {
            sql(sqlite_rebuild(store, catalog, d.table), false)
        }
        (DriftKind::MissingUnique(index), _) if index.ends_with("_pkey") => sql(
            format!(
                "ALTER TABLE {name} ADD PRIMARY KEY ({});",
                table.unique_columns_sql(index)
            ),
            false,
        ),
        (DriftKind::MissingUnique(_), _) => sql(schema::restoring_sql(store, d)?, true),
    }
}

/// The statements of the embedded migrations that create `table` and its indexes
/// (all `IF NOT EXISTS`, so safe to run again).
pub(super) fn migration_statements(store: &Store, table: &str) -> String {
    // Comments go first: they may contain `;`.
    let create = format!("CREATE TABLE IF NOT EXISTS \"{table}\"");
    let alter = format!("ALTER TABLE \"{table}\"");
    let on = format!("ON \"{table}\"(");
    let statements = store
        .migrator()
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| without_comments(m.sql.as_str()))
        .flat_map(|sql| {
            sql.split(';')
                .map(|stmt| stmt.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .filter(|stmt| {
            stmt.starts_with(&create)
                || stmt.starts_with(&alter)
                || (stmt.starts_with("CREATE") && stmt.contains(&on))
        })
        .map(|stmt| format!("{stmt};"))
        .collect::<Vec<_>>()
        .join("\n");
    // The migrations create clerk-sync's own tables in the app's schema; version 5 moves
    // them. A fix creates them where they belong.
    let quoted = format!("\"{table}\"");
    statements.replace(&quoted, &schema::qualified(store, table))
}

/// SQL text without its `--` comment lines.
pub(super) fn without_comments(sql: &str) -> String {
    sql.lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Rebuild a SQLite table to the contract's shape: rename, create, copy every row
/// (extra columns kept), drop the renamed copy, recreate the indexes.
pub(super) fn sqlite_rebuild(store: &Store, catalog: &Catalog, table: &str) -> String {
    let spec = schema::table(table);
    let live = catalog.columns.get(table).cloned().unwrap_or_default();
    let statements = migration_statements(store, table);
    let (creates, indexes): (Vec<&str>, Vec<&str>) = statements
        .split_inclusive(";\n")
        .map(str::trim)
        .partition(|s| s.starts_with("CREATE TABLE"));
    let old = format!("_{table}_rebuild");
    let mut out = vec![format!("ALTER TABLE \"{table}\" RENAME TO \"{old}\";")];
    out.extend(creates.iter().map(|s| s.to_string()));
    for (name, c) in &live {
        if !spec.columns.iter().any(|sc| sc.name == name) {
            out.push(format!(
                "ALTER TABLE \"{table}\" ADD COLUMN \"{name}\" {};",
                c.declared
            ));
        }
    }
    let cols = live
        .keys()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ");
    out.push(format!(
        "INSERT INTO \"{table}\" ({cols}) SELECT {cols} FROM \"{old}\";"
    ));
    out.push(format!("DROP TABLE \"{old}\";"));
    out.extend(indexes.iter().map(|s| s.to_string()));
    // The ledger trigger went with the old table.
    if table == "User" {
        out.extend(ledger_trigger_sql(store));
    }
    out.join("\n")
}
