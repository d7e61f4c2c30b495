//! `clerk-sync prisma-schema`: what clerk-sync adds to the app's three tables, declared
//! for the app's `schema.prisma` (fields, `@map`-free names, `@@index` / `@@unique`), and
//! as an idempotent SQL migration the app can commit into `prisma/migrations/`. With both,
//! Prisma's model matches the database exactly, whichever of the app's migrations and
//! `clerk-sync migrate` ran first, and `prisma migrate dev` finds no drift.
//!
//! clerk-sync's own tables are not here: on PostgreSQL they live in schema `clerk_sync`,
//! which a Prisma datasource on the app's schema never sees.

use std::fmt::Write as _;

/// A column clerk-sync adds to one of the app's tables.
struct AddedColumn {
    model: &'static str,
    field: &'static str,
    /// The field line for `schema.prisma`.
    prisma: &'static str,
    /// The column type in PostgreSQL.
    sql_type: &'static str,
}

/// An index clerk-sync adds (Prisma's default names, so no `map:` is needed).
struct AddedIndex {
    model: &'static str,
    name: &'static str,
    unique: bool,
    columns: &'static [&'static str],
    /// The block attribute for `schema.prisma`; `None` when a field attribute declares it.
    prisma: Option<&'static str>,
}

const COLUMNS: &[AddedColumn] = &[
    AddedColumn {
        model: "WebhookEvent",
        field: "status",
        prisma: "status         String? // clerk-sync: processed, ignored or failed",
        sql_type: "TEXT",
    },
    AddedColumn {
        model: "WebhookEvent",
        field: "error",
        prisma: "error          String? // clerk-sync: why the event failed",
        sql_type: "TEXT",
    },
    AddedColumn {
        model: "WebhookEvent",
        field: "payload",
        prisma: "payload        Json?   // clerk-sync: the verified event (erased on user.deleted)",
        sql_type: "JSONB",
    },
    AddedColumn {
        model: "WebhookEvent",
        field: "clerkId",
        prisma: "clerkId        String? // clerk-sync: the Clerk user the event is about",
        sql_type: "TEXT",
    },
    AddedColumn {
        model: "Transaction",
        field: "reason",
        prisma: "reason         String? // clerk-sync: signup_bonus, consume, grant, purchase, refund, adjustment, direct_write",
        sql_type: "TEXT",
    },
    AddedColumn {
        model: "Transaction",
        field: "webhookEventId",
        prisma: "webhookEventId String? @unique // clerk-sync: the svix-id that wrote the row",
        sql_type: "TEXT",
    },
    AddedColumn {
        model: "Transaction",
        field: "idempotencyKey",
        prisma: "idempotencyKey String? // clerk-sync: unique per user when present",
        sql_type: "TEXT",
    },
    AddedColumn {
        model: "Transaction",
        field: "balanceAfter",
        prisma: "balanceAfter   Int?    // clerk-sync: the balance after this row",
        sql_type: "INTEGER",
    },
];

const INDEXES: &[AddedIndex] = &[
    AddedIndex {
        model: "WebhookEvent",
        name: "WebhookEvent_clerkId_idx",
        unique: false,
        columns: &["clerkId"],
        prisma: Some("@@index([clerkId])"),
    },
    AddedIndex {
        model: "Transaction",
        name: "Transaction_webhookEventId_key",
        unique: true,
        columns: &["webhookEventId"],
        prisma: None,
    },
    AddedIndex {
        model: "Transaction",
        name: "Transaction_userId_idempotencyKey_key",
        unique: true,
        columns: &["userId", "idempotencyKey"],
        prisma: Some("@@unique([userId, idempotencyKey])"),
    },
    AddedIndex {
        model: "Transaction",
        name: "Transaction_userId_createdAt_idx",
        unique: false,
        columns: &["userId", "createdAt"],
        prisma: Some("@@index([userId, createdAt])"),
    },
];

/// The seed's incident, fixed in the model: the column gets a DEFAULT, which
/// `@updatedAt` alone never asks Prisma Migrate for.
const UPDATED_AT: &str = "updatedAt            DateTime @default(now()) @updatedAt // clerk-sync: DEFAULT CURRENT_TIMESTAMP, so every writer works";

const MODELS: [&str; 3] = ["User", "WebhookEvent", "Transaction"];

/// The lines one model needs, given what the app's model already has (`None`: print
/// every line).
fn lines_for(model: &str, existing: Option<&Model>) -> Vec<String> {
    let mut out = Vec::new();
    if model == "User" {
        let has_default = existing
            .and_then(|m| m.field_line("updatedAt"))
            .is_some_and(|l| l.contains("@default("));
        if !has_default {
            out.push(UPDATED_AT.to_owned());
        }
    }
    for c in COLUMNS.iter().filter(|c| c.model == model) {
        if existing.is_none_or(|m| m.field_line(c.field).is_none()) {
            out.push(c.prisma.to_owned());
        }
    }
    for i in INDEXES.iter().filter(|i| i.model == model) {
        let Some(attr) = i.prisma else { continue };
        if existing.is_none_or(|m| !m.has_block_attribute(attr)) {
            out.push(attr.to_owned());
        }
    }
    out
}

/// The fields and attributes to add, per model, as text for a person.
pub fn render(schema: Option<&str>) -> Result<String, PrismaSchemaError> {
    let models = schema.map(parse_models).transpose()?;
    let mut s = String::from(
        "// clerk-sync adds these columns and indexes to the app's tables. Put them in the\n\
         // models of prisma/schema.prisma (`clerk-sync prisma-schema --schema FILE --write`\n\
         // does it), so that Prisma's model matches the database exactly. Without\n\
         // --schema every line is printed, including the ones your models may have.\n",
    );
    let mut any = false;
    for model in MODELS {
        let existing = match &models {
            Some(ms) => Some(
                ms.iter()
                    .find(|m| m.name == model)
                    .ok_or(PrismaSchemaError::MissingModel(model))?,
            ),
            None => None,
        };
        let lines = lines_for(model, existing);
        if lines.is_empty() {
            continue;
        }
        any = true;
        let _ = writeln!(s, "\nmodel {model} {{\n  // ... the app's fields ...");
        for l in lines {
            if l == UPDATED_AT {
                s.push_str("  // replaces the model's updatedAt field:\n");
            }
            let _ = writeln!(s, "  {l}");
        }
        s.push_str("}\n");
    }
    if !any {
        s.push_str("\n// Nothing to add: the schema already declares all of it.\n");
    }
    Ok(s)
}

/// What the app's models lack, as (model, line to add): empty when `prisma migrate dev`
/// from this schema would keep every column, index and default clerk-sync needs.
pub fn lacking(schema: &str) -> Result<Vec<(&'static str, String)>, PrismaSchemaError> {
    let models = parse_models(schema)?;
    let mut out = Vec::new();
    for model in MODELS {
        let existing = models
            .iter()
            .find(|m| m.name == model)
            .ok_or(PrismaSchemaError::MissingModel(model))?;
        out.extend(
            lines_for(model, Some(existing))
                .into_iter()
                .map(|l| (model, l)),
        );
    }
    Ok(out)
}

/// The app's schema with clerk-sync's fields and attributes added to its models.
pub fn apply(schema: &str) -> Result<String, PrismaSchemaError> {
    let models = parse_models(schema)?;
    let mut lines: Vec<String> = schema.lines().map(str::to_owned).collect();
    // Edit from the last model up, so earlier line numbers stay valid.
    let mut targets: Vec<&Model> = MODELS
        .iter()
        .map(|name| {
            models
                .iter()
                .find(|m| m.name == *name)
                .ok_or(PrismaSchemaError::MissingModel(name))
        })
        .collect::<Result<_, _>>()?;
    targets.sort_by_key(|m| std::cmp::Reverse(m.close));
    for m in targets {
        let mut add = lines_for(&m.name, Some(m));
        if m.name == "User" && add.first().map(String::as_str) == Some(UPDATED_AT) {
            add.remove(0);
            match m.field_index("updatedAt") {
                Some(i) => lines[m.open + 1 + i] = format!("  {UPDATED_AT}"),
                None => add.insert(0, UPDATED_AT.to_owned()),
            }
        }
        for (k, l) in add.into_iter().enumerate() {
            lines.insert(m.close + k, format!("  {l}"));
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    Ok(out)
}

/// The migration for `prisma/migrations/<timestamp>_clerk_sync/migration.sql`: every
/// statement `IF NOT EXISTS` or idempotent, so it applies whether `clerk-sync migrate` ran
/// before it or not, and is a no-op for a database clerk-sync already adopted.
pub fn migration() -> String {
    let mut s = String::from(
        "-- clerk-sync: the columns and indexes clerk-sync adds to the app's tables, as\n\
         -- `clerk-sync prisma-schema` declares them. Idempotent: it changes nothing on a\n\
         -- database that `clerk-sync migrate` already adopted, and adds what is missing\n\
         -- otherwise, so the app's migrations and clerk-sync's run in either order.\n\n",
    );
    s.push_str(
        "-- The seed's incident: @updatedAt leaves the column without a DEFAULT.\n\
         ALTER TABLE \"User\" ALTER COLUMN \"updatedAt\" SET DEFAULT CURRENT_TIMESTAMP;\n",
    );
    for model in MODELS {
        let cols: Vec<String> = COLUMNS
            .iter()
            .filter(|c| c.model == model)
            .map(|c| {
                format!(
                    "    ADD COLUMN IF NOT EXISTS \"{}\" {}",
                    c.field, c.sql_type
                )
            })
            .collect();
        if !cols.is_empty() {
            let _ = write!(s, "\nALTER TABLE \"{model}\"\n{};\n", cols.join(",\n"));
        }
        for i in INDEXES.iter().filter(|i| i.model == model) {
            let cols = i
                .columns
                .iter()
                .map(|c| format!("\"{c}\""))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(
                s,
                "CREATE {}INDEX IF NOT EXISTS \"{}\" ON \"{model}\"({cols});",
                if i.unique { "UNIQUE " } else { "" },
                i.name
            );
        }
    }
    s
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PrismaSchemaError {
    #[error("the schema has no `model {0}`: is this the app's prisma/schema.prisma?")]
    MissingModel(&'static str),
    #[error("`model {0}` has no closing brace")]
    Unclosed(String),
}

/// One `model Name { … }` block: its lines, from the `{` line (`open`) to the `}` line
/// (`close`), numbered in the whole file.
#[derive(Debug)]
struct Model {
    name: String,
    open: usize,
    close: usize,
    body: Vec<String>,
}

impl Model {
    /// The line declaring `field`, if any.
    fn field_line(&self, field: &str) -> Option<&str> {
        self.field_index(field).map(|i| self.body[i].as_str())
    }

    fn field_index(&self, field: &str) -> Option<usize> {
        self.body
            .iter()
            .position(|l| l.split_whitespace().next() == Some(field))
    }

    fn has_block_attribute(&self, attr: &str) -> bool {
        let want: String = attr.chars().filter(|c| !c.is_whitespace()).collect();
        self.body.iter().any(|l| {
            let code = l.split("//").next().unwrap_or("");
            let got: String = code.chars().filter(|c| !c.is_whitespace()).collect();
            // `@@index([a, b], map: "…")` declares the same index as `@@index([a, b])`.
            got == want || got.starts_with(&format!("{},", want.trim_end_matches(')')))
        })
    }
}

fn parse_models(schema: &str) -> Result<Vec<Model>, PrismaSchemaError> {
    let lines: Vec<&str> = schema.lines().collect();
    let mut models = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let mut words = lines[i].split_whitespace();
        if words.next() == Some("model") {
            let name = words.next().unwrap_or("").trim_end_matches('{').to_owned();
            let open = i;
            let close = (i + 1..lines.len())
                .find(|&j| lines[j].trim_start().starts_with('}'))
                .ok_or_else(|| PrismaSchemaError::Unclosed(name.clone()))?;
            models.push(Model {
                name,
                open,
                close,
                body: lines[open + 1..close]
                    .iter()
                    .map(|l| l.to_string())
                    .collect(),
            });
            i = close;
        }
        i += 1;
    }
    Ok(models)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = "model User {\n  id String @id\n  updatedAt DateTime @updatedAt\n}\n\nmodel WebhookEvent {\n  id String @id\n  status String?\n}\n\nmodel Transaction {\n  id String @id\n  userId String?\n  reason String?\n  webhookEventId String? @unique\n  @@index([userId, createdAt], map: \"Transaction_userId_createdAt_idx\")\n}\n";

    #[test]
    fn prints_only_what_the_schema_lacks() {
        let out = render(Some(SEED)).unwrap();
        assert!(out.contains("@default(now()) @updatedAt"));
        assert!(out.contains("clerkId        String?"));
        assert!(!out.contains("status         String?"), "{out}");
        assert!(!out.contains("webhookEventId String?"), "{out}");
        assert!(!out.contains("@@index([userId, createdAt])"), "{out}");
        assert!(out.contains("@@unique([userId, idempotencyKey])"));
    }

    #[test]
    fn writing_twice_adds_nothing_the_second_time() {
        let once = apply(SEED).unwrap();
        assert_eq!(apply(&once).unwrap(), once);
        assert!(render(Some(&once)).unwrap().contains("Nothing to add"));
        let user = parse_models(&once).unwrap().remove(0);
        assert_eq!(
            user.field_line("updatedAt").map(str::trim),
            Some(UPDATED_AT),
            "the line is replaced, not duplicated"
        );
        assert_eq!(user.body.len(), 2);
    }

    #[test]
    fn the_check_lists_what_is_lacking_until_written() {
        let missing = lacking(SEED).unwrap();
        assert!(missing.contains(&("WebhookEvent", COLUMNS[3].prisma.to_owned())));
        assert!(missing
            .iter()
            .any(|(m, l)| *m == "Transaction" && l == "@@unique([userId, idempotencyKey])"));
        assert!(!missing.iter().any(|(_, l)| l.starts_with("status ")));
        assert_eq!(lacking(&apply(SEED).unwrap()).unwrap(), vec![]);
    }

    #[test]
    fn a_schema_without_the_models_is_refused() {
        assert_eq!(
            render(Some("model Post {\n}\n")),
            Err(PrismaSchemaError::MissingModel("User"))
        );
    }

    #[test]
    fn the_migration_is_idempotent_sql() {
        let sql = migration();
        for line in sql.lines().filter(|l| l.starts_with("CREATE")) {
            assert!(line.contains("IF NOT EXISTS"), "{line}");
        }
        assert_eq!(
            sql.matches("ADD COLUMN IF NOT EXISTS").count(),
            COLUMNS.len()
        );
    }
}
