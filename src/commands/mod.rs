//! The commands around the service, each a tool for the people who run it: `diagnose`
//! (find the seed's failure class in a live database), `smoke`, `send` (a signed sample
//! webhook), `bench` (a load generator), `prisma-schema` and `replay` (apply again the
//! webhooks recorded `failed`). They use the service's layers
//! (storage, signup, webhooks); nothing in the service uses them.

pub mod bench;
pub mod diagnose;
pub mod prisma_schema;
pub mod replay;
pub mod send;
pub mod smoke;
