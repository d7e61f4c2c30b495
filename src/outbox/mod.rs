//! Work done after commit: jobs written in the signup transaction, delivered by a worker
//! that runs apart from the HTTP handlers.

pub mod clerk_client;
pub mod worker;

use serde::{Deserialize, Serialize};

pub use clerk_client::{ClerkClient, DeliveryError};

/// A job's payload: tagged and versioned, so old rows stay readable after a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Job {
    /// Write our user id into the Clerk user's `public_metadata.userId`.
    #[serde(rename = "update_clerk_metadata.v1", rename_all = "camelCase")]
    UpdateClerkMetadata { clerk_id: String, user_id: String },
}

impl Job {
    /// The `"OutboxJob".kind` column.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::UpdateClerkMetadata { .. } => "update_clerk_metadata",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_shape_is_stable() {
        let job = Job::UpdateClerkMetadata {
            clerk_id: "user_1".into(),
            user_id: "u1".into(),
        };
        assert_eq!(
            serde_json::to_value(&job).unwrap(),
            serde_json::json!({"type": "update_clerk_metadata.v1", "clerkId": "user_1", "userId": "u1"})
        );
    }
}
