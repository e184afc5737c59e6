//! Who the user is, and which Dify conversation a request continues: identity, history
//! fingerprints, the resolver that applies the continuity rules, and the stores.

pub mod fingerprint;
pub mod identity;
pub mod legacy;
pub mod record;
pub mod redis_store;
pub mod resolver;
pub mod sqlite;
pub mod store;

pub use identity::{Identity, IdentityRules, IdentitySource, first_header};
pub use record::{ResponseRecord, StoreError, now_secs};
pub use resolver::{Continuity, Conversations, Decision, Recorder, RequestView};
pub use store::Store;
