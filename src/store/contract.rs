//! The contract's tables as data, the live catalog of either backend, and the
//! differences between them, each with the SQL that fixes it.

use std::collections::BTreeMap;

use crate::store::{Store, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    Text,
    Integer,
    BigInt,
    Timestamp,
    Boolean,
    Json,
}

impl Ty {
    fn pg(self) -> &'static str {
        match self {
            Ty::Text => "text",
            Ty::Integer => "integer",
            Ty::BigInt => "bigint",
            Ty::Timestamp => "timestamp(3)",
            Ty::Boolean => "boolean",
            Ty::Json => "jsonb",
        }
    }

    /// `information_schema.columns.data_type` for this type.
    fn pg_catalog(self) -> &'static str {
        match self {
            Ty::Timestamp => "timestamp without time zone",
            other => other.pg(),
        }
    }

    fn sqlite(self) -> &'static str {
        match self {
            Ty::Text | Ty::Json => "TEXT",
            Ty::Integer | Ty::BigInt => "INTEGER",
            Ty::Timestamp => "DATETIME",
            Ty::Boolean => "BOOLEAN",
        }
    }

    fn sqlite_accepts(self, declared: &str) -> bool {
        let d = declared.to_ascii_uppercase();
        match self {
            Ty::Text => d == "TEXT",
            Ty::Json => matches!(d.as_str(), "TEXT" | "JSON" | "JSONB"),
            Ty::Integer | Ty::BigInt => matches!(d.as_str(), "INTEGER" | "INT" | "BIGINT"),
            Ty::Timestamp => matches!(d.as_str(), "DATETIME" | "TIMESTAMP"),
            Ty::Boolean => d == "BOOLEAN",
        }
    }
}

pub struct Column {
    pub name: &'static str,
    pub ty: Ty,
    pub nullable: bool,
    /// The DEFAULT the contract gives the column, as SQL.
    pub default: Option<&'static str>,
    /// Set for columns the seed's Prisma client fills itself, so the database may lack a
    /// default without Prisma noticing (but every other writer fails).
    pub prisma_client_side: Option<&'static str>,
}

pub struct Table {
    pub name: &'static str,
    pub columns: &'static [Column],
    /// Unique indexes (the primary key included): name and columns.
    pub unique: &'static [(&'static str, &'static [&'static str])],
}

const fn col(name: &'static str, ty: Ty, nullable: bool, default: Option<&'static str>) -> Column {
    Column {
        name,
        ty,
        nullable,
        default,
        prisma_client_side: None,
    }
}

const NOW: Option<&str> = Some("CURRENT_TIMESTAMP");

pub const TABLES: &[Table] = &[
    Table {
        name: "User",
        columns: &[
            Column {
                prisma_client_side: Some("@default(cuid())"),
                ..col("id", Ty::Text, false, None)
            },
            col("clerkId", Ty::Text, false, None),
            col("email", Ty::Text, false, None),
            col("photo", Ty::Text, false, None),
            col("firstName", Ty::Text, true, None),
            col("lastName", Ty::Text, true, None),
            col("usedGenerations", Ty::Integer, false, Some("0")),
            col("availableGenerations", Ty::Integer, false, Some("20")),
            col("createdAt", Ty::Timestamp, false, NOW),
            Column {
                prisma_client_side: Some("@updatedAt"),
                ..col("updatedAt", Ty::Timestamp, false, NOW)
            },
        ],
        unique: &[
            ("User_pkey", &["id"]),
            ("User_clerkId_key", &["clerkId"]),
            ("User_email_key", &["email"]),
        ],
    },
    Table {
        name: "WebhookEvent",
        columns: &[
            Column {
                prisma_client_side: Some("@default(cuid())"),
                ..col("id", Ty::Text, false, None)
            },
            col("eventId", Ty::Text, false, None),
            col("eventType", Ty::Text, false, None),
            col("processed", Ty::Boolean, false, Some("false")),
            col("processedAt", Ty::Timestamp, true, None),
            col("createdAt", Ty::Timestamp, false, NOW),
            col("status", Ty::Text, true, None),
            col("error", Ty::Text, true, None),
            col("payload", Ty::Json, true, None),
            col("clerkId", Ty::Text, true, None),
        ],
        unique: &[
            ("WebhookEvent_pkey", &["id"]),
            ("WebhookEvent_eventId_key", &["eventId"]),
        ],
    },
    Table {
        name: "Transaction",
        columns: &[
            Column {
                prisma_client_side: Some("@default(cuid())"),
                ..col("id", Ty::Text, false, None)
            },
            col("tracking_id", Ty::Text, false, None),
            col("userId", Ty::Text, true, None),
            col("status", Ty::Text, true, None),
            col("amount", Ty::Integer, true, None),
            col("currency", Ty::Text, true, None),
            col("description", Ty::Text, true, None),
            col("type", Ty::Text, true, None),
            col("payment_method_type", Ty::Text, true, None),
            col("message", Ty::Text, true, None),
            col("paid_at", Ty::Timestamp, true, None),
            col("receipt_url", Ty::Text, true, None),
            col("createdAt", Ty::Timestamp, false, NOW),
            col("reason", Ty::Text, true, None),
            col("webhookEventId", Ty::Text, true, None),
            col("idempotencyKey", Ty::Text, true, None),
            col("balanceAfter", Ty::Integer, true, None),
        ],
        unique: &[
            ("Transaction_pkey", &["id"]),
            ("Transaction_webhookEventId_key", &["webhookEventId"]),
            (
                "Transaction_userId_idempotencyKey_key",
                &["userId", "idempotencyKey"],
            ),
        ],
    },
    Table {
        name: "ClerkUserSync",
        columns: &[
            col("clerkId", Ty::Text, false, None),
            col("clerkUpdatedAt", Ty::BigInt, false, None),
            col("deletedAt", Ty::Timestamp, true, None),
        ],
        unique: &[("ClerkUserSync_pkey", &["clerkId"])],
    },
    Table {
        name: "OutboxJob",
        columns: &[
            col("id", Ty::Text, false, None),
            col("kind", Ty::Text, false, None),
            col("payload", Ty::Json, false, None),
            col("status", Ty::Text, false, Some("'pending'")),
            col("attempts", Ty::Integer, false, Some("0")),
            col("nextAttemptAt", Ty::Timestamp, false, NOW),
            col("lastError", Ty::Text, true, None),
            col("createdAt", Ty::Timestamp, false, NOW),
            col("updatedAt", Ty::Timestamp, false, NOW),
        ],
        unique: &[("OutboxJob_pkey", &["id"])],
    },
];

/// One column as the database has it.
#[derive(Debug, Clone)]
pub struct LiveColumn {
    pub declared: String,
    pub nullable: bool,
    pub default: Option<String>,
}

/// The live schema: table → column → shape, and table → unique column lists.
#[derive(Debug, Default)]
pub struct Catalog {
    pub columns: BTreeMap<String, BTreeMap<String, LiveColumn>>,
    pub unique: BTreeMap<String, Vec<Vec<String>>>,
}

const PG_COLUMNS: &str = r#"
SELECT table_name::text, column_name::text, data_type::text, is_nullable = 'YES', column_default::text
FROM information_schema.columns
WHERE (table_schema = current_schema() AND table_name IN ('User', 'WebhookEvent', 'Transaction'))
   OR (table_schema = 'clerk_sync' AND table_name IN ('ClerkUserSync', 'OutboxJob'))"#;

const PG_UNIQUE: &str = r#"
SELECT t.relname::text,
       array_agg(a.attname::text ORDER BY k.ord)
FROM pg_index ix
JOIN pg_class t ON t.oid = ix.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
CROSS JOIN LATERAL unnest(ix.indkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum
WHERE ix.indisunique AND ix.indpred IS NULL
  AND ((n.nspname = current_schema() AND t.relname IN ('User', 'WebhookEvent', 'Transaction'))
    OR (n.nspname = 'clerk_sync' AND t.relname IN ('ClerkUserSync', 'OutboxJob')))
GROUP BY t.relname, ix.indexrelid"#;

const SQLITE_COLUMNS: &str =
    r#"SELECT name, type, "notnull" = 0, dflt_value, pk FROM pragma_table_info($1)"#;

const SQLITE_UNIQUE: &str = r#"
SELECT il.name, group_concat(ii.name, ',')
FROM pragma_index_list($1) il, pragma_index_info(il.name) ii
WHERE il."unique" = 1 AND il.partial = 0
GROUP BY il.name"#;

/// Read the catalog of the contract's tables.
pub async fn read_catalog(store: &Store) -> Result<Catalog, StoreError> {
    let mut catalog = Catalog::default();
    match store {
        Store::Postgres(pg) => {
            let rows: Vec<(String, String, String, bool, Option<String>)> =
                sqlx::query_as(PG_COLUMNS)
                    .persistent(pg.prepared)
                    .fetch_all(&pg.pool)
                    .await?;
            for (table, column, declared, nullable, default) in rows {
                catalog.columns.entry(table).or_default().insert(
                    column,
                    LiveColumn {
                        declared,
                        nullable,
                        default,
                    },
                );
            }
            let rows: Vec<(String, Vec<String>)> = sqlx::query_as(PG_UNIQUE)
                .persistent(pg.prepared)
                .fetch_all(&pg.pool)
                .await?;
            for (table, cols) in rows {
                catalog.unique.entry(table).or_default().push(cols);
            }
        }
        Store::Sqlite(lite) => {
            for table in TABLES {
                let rows: Vec<(String, String, bool, Option<String>, i64)> =
                    sqlx::query_as(SQLITE_COLUMNS)
                        .bind(table.name)
                        .fetch_all(&lite.pool)
                        .await?;
                let mut pk = Vec::new();
                for (column, declared, nullable, default, pk_pos) in rows {
                    if pk_pos > 0 {
                        pk.push(column.clone());
                    }
                    catalog
                        .columns
                        .entry(table.name.to_owned())
                        .or_default()
                        .insert(
                            column,
                            LiveColumn {
                                declared,
                                nullable,
                                default,
                            },
                        );
                }
                if !pk.is_empty() {
                    catalog
                        .unique
                        .entry(table.name.to_owned())
                        .or_default()
                        .push(pk);
                }
                let rows: Vec<(String, String)> = sqlx::query_as(SQLITE_UNIQUE)
                    .bind(table.name)
                    .fetch_all(&lite.pool)
                    .await?;
                for (_, cols) in rows {
                    catalog
                        .unique
                        .entry(table.name.to_owned())
                        .or_default()
                        .push(cols.split(',').map(str::to_owned).collect());
                }
            }
        }
    }
    Ok(catalog)
}

/// One difference between the contract and the database.
#[derive(Debug, Clone)]
pub struct Drift {
    pub table: &'static str,
    pub what: String,
    pub kind: DriftKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriftKind {
    MissingTable,
    MissingColumn(&'static str),
    WrongType(&'static str),
    WrongNullability(&'static str),
    MissingDefault(&'static str),
    MissingUnique(&'static str),
}

fn default_matches(expected: &str, live: &str) -> bool {
    let live = live.to_ascii_lowercase();
    let expected = expected.to_ascii_lowercase();
    match expected.as_str() {
        "current_timestamp" => live.contains("current_timestamp") || live.contains("now()"),
        "'pending'" => live.contains("pending"),
        other => {
            live.trim_matches(|c| c == '(' || c == ')' || c == '\'') == other
                || live.starts_with(&format!("'{other}'"))
        }
    }
}

/// Compare the catalog with the contract.
pub fn drift(store: &Store, catalog: &Catalog) -> Vec<Drift> {
    let sqlite = matches!(store, Store::Sqlite(_));
    let mut out = Vec::new();
    for table in TABLES {
        let Some(live) = catalog.columns.get(table.name) else {
            out.push(Drift {
                table: table.name,
                what: format!("table \"{}\" is missing", table.name),
                kind: DriftKind::MissingTable,
            });
            continue;
        };
        for c in table.columns {
            let Some(lc) = live.get(c.name) else {
                out.push(Drift {
                    table: table.name,
                    what: format!("\"{}\".\"{}\" is missing", table.name, c.name),
                    kind: DriftKind::MissingColumn(c.name),
                });
                continue;
            };
            let type_ok = if sqlite {
                c.ty.sqlite_accepts(&lc.declared)
            } else {
                // A text column the app declared `@db.VarChar(n)` takes text as well.
                lc.declared == c.ty.pg_catalog()
                    || (c.ty == Ty::Text
                        && matches!(lc.declared.as_str(), "character varying" | "character"))
            };
            if !type_ok {
                out.push(Drift {
                    table: table.name,
                    what: format!(
                        "\"{}\".\"{}\" has type {}, expected {}",
                        table.name,
                        c.name,
                        lc.declared,
                        if sqlite { c.ty.sqlite() } else { c.ty.pg() }
                    ),
                    kind: DriftKind::WrongType(c.name),
                });
            }
            if lc.nullable != c.nullable {
                out.push(Drift {
                    table: table.name,
                    what: format!(
                        "\"{}\".\"{}\" is {}, expected {}",
                        table.name,
                        c.name,
                        if lc.nullable { "nullable" } else { "NOT NULL" },
                        if c.nullable { "nullable" } else { "NOT NULL" }
                    ),
                    kind: DriftKind::WrongNullability(c.name),
                });
            }
            if let Some(expected) = c.default {
                if !lc
                    .default
                    .as_deref()
                    .is_some_and(|d| default_matches(expected, d))
                {
                    let client_side = c
                        .prisma_client_side
                        .map(|attr| format!("; the Prisma client fills it itself ({attr}), so only other writers fail"))
                        .unwrap_or_default();
                    out.push(Drift {
                        table: table.name,
                        what: format!(
                            "\"{}\".\"{}\" is NOT NULL without DEFAULT {expected}: an INSERT that omits it fails{client_side}",
                            table.name, c.name
                        ),
                        kind: DriftKind::MissingDefault(c.name),
                    });
                }
            }
        }
        let live_unique = catalog.unique.get(table.name).cloned().unwrap_or_default();
        for (index, cols) in table.unique {
            if !live_unique
                .iter()
                .any(|u| u.iter().map(String::as_str).eq(cols.iter().copied()))
            {
                out.push(Drift {
                    table: table.name,
                    what: format!(
                        "\"{}\"({}) has no unique index: duplicates are not rejected",
                        table.name,
                        cols.join(", ")
                    ),
                    kind: DriftKind::MissingUnique(index),
                });
            }
        }
    }
    out
}

impl Drift {
    /// Whether the service cannot do its job safely while this lasts: a table, column or
    /// unique index it writes is gone, or a column's type no longer takes what it writes
    /// or reads. A missing DEFAULT or a different nullability is reported by `diagnose`
    /// but does not stop the service: it writes every column itself.
    pub fn blocks_writes(&self) -> bool {
        matches!(
            self.kind,
            DriftKind::MissingTable
                | DriftKind::MissingColumn(_)
                | DriftKind::WrongType(_)
                | DriftKind::MissingUnique(_)
        )
    }
}

/// Columns the Prisma client fills itself and the database gives no default, named so
/// that whoever writes to the table by other means knows to supply them.
pub fn client_side_note(catalog: &Catalog) -> Option<String> {
    let mut named = Vec::new();
    let mut attrs = Vec::new();
    for table in TABLES {
        for c in table.columns.iter().filter(|c| c.default.is_none()) {
            let Some(attr) = c.prisma_client_side else {
                continue;
            };
            let live = catalog.columns.get(table.name).and_then(|t| t.get(c.name));
            if live.is_some_and(|lc| lc.default.is_none()) {
                named.push(format!("\"{}\".\"{}\"", table.name, c.name));
                if !attrs.contains(&attr) {
                    attrs.push(attr);
                }
            }
        }
    }
    (!named.is_empty()).then(|| {
        format!(
            "{} have no database default: the Prisma client fills them ({}) and clerk-sync writes them; any other writer must supply them",
            named.join(", "),
            attrs.join(", ")
        )
    })
}

/// How SQL names a contract table: clerk-sync's own tables are in schema `clerk_sync` on
/// PostgreSQL.
pub fn qualified(store: &Store, table: &str) -> String {
    match store {
        Store::Postgres(_) if crate::store::OWN_TABLES.contains(&table) => {
            format!("{}.\"{table}\"", crate::store::OWN_SCHEMA)
        }
        _ => format!("\"{table}\""),
    }
}

pub fn table(name: &str) -> &'static Table {
    TABLES
        .iter()
        .find(|t| t.name == name)
        .expect("contract table")
}

pub fn column(table: &Table, name: &str) -> &'static Column {
    table
        .columns
        .iter()
        .find(|c| c.name == name)
        .expect("contract column")
}

impl Column {
    pub fn pg_decl(&self) -> String {
        let mut s = format!("\"{}\" {}", self.name, self.ty.pg().to_uppercase());
        if !self.nullable {
            s.push_str(" NOT NULL");
        }
        if let Some(d) = self.default {
            s.push_str(&format!(" DEFAULT {d}"));
        }
        s
    }

    pub fn sqlite_decl(&self) -> String {
        let mut s = format!("\"{}\" {}", self.name, self.ty.sqlite());
        if let Some(d) = self.default {
            if !self.nullable {
                s.push_str(" NOT NULL");
            }
            s.push_str(&format!(" DEFAULT {d}"));
        }
        s
    }
}

/// The trigger that gives the app's direct balance changes a ledger row (migration 6).
pub const LEDGER_TRIGGER: &str = "User_credits_ledger";

pub async fn ledger_trigger_exists(store: &Store) -> Result<bool, StoreError> {
    const PG: &str = r#"
SELECT EXISTS (SELECT 1 FROM pg_trigger
               WHERE tgrelid = to_regclass('"User"') AND tgname = $1 AND tgenabled <> 'D')"#;
    const LITE: &str =
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = $1)";
    Ok(match store {
        Store::Postgres(pg) => {
            sqlx::query_scalar(PG)
                .bind(LEDGER_TRIGGER)
                .persistent(pg.prepared)
                .fetch_one(&pg.pool)
                .await?
        }
        Store::Sqlite(lite) => {
            sqlx::query_scalar(LITE)
                .bind(LEDGER_TRIGGER)
                .fetch_one(&lite.pool)
                .await?
        }
    })
}

/// The SQL that adds back a missing column or unique index, as `diagnose --fix` runs it;
/// `None` for what needs `diagnose` to work out (tables, types, primary keys).
pub fn restoring_sql(store: &Store, d: &Drift) -> Option<String> {
    let spec = table(d.table);
    let name = qualified(store, d.table);
    match d.kind {
        DriftKind::MissingColumn(c) => {
            let col = column(spec, c);
            Some(match store {
                Store::Postgres(_) => {
                    format!(
                        "ALTER TABLE {name} ADD COLUMN IF NOT EXISTS {};",
                        col.pg_decl()
                    )
                }
                Store::Sqlite(_) => format!("ALTER TABLE {name} ADD COLUMN {};", col.sqlite_decl()),
            })
        }
        DriftKind::MissingUnique(index) if !index.ends_with("_pkey") => Some(format!(
            "CREATE UNIQUE INDEX IF NOT EXISTS \"{index}\" ON {name}({});",
            spec.unique_columns_sql(index)
        )),
        _ => None,
    }
}

impl Table {
    /// The columns of the contract's unique index `index`, quoted and comma separated.
    pub fn unique_columns_sql(&self, index: &str) -> String {
        self.unique
            .iter()
            .find(|(n, _)| *n == index)
            .map(|(_, c)| *c)
            .unwrap_or_default()
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Statements that failed because the schema lacked what they named, counted
/// process-wide; the schema watch checks at once when it moves.
fn schema_errors() -> &'static tokio::sync::watch::Sender<u64> {
    static ERRORS: std::sync::OnceLock<tokio::sync::watch::Sender<u64>> =
        std::sync::OnceLock::new();
    ERRORS.get_or_init(|| tokio::sync::watch::channel(0).0)
}

/// A statement failed for want of a table, column, index or type (`StoreError::Schema`).
pub fn alarm() {
    schema_errors().send_modify(|n| *n = n.wrapping_add(1));
}

/// Wakes when [`alarm`] is called.
pub fn alarms() -> tokio::sync::watch::Receiver<u64> {
    schema_errors().subscribe()
}
