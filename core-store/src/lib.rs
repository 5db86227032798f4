//! mailgate-core: the protocol-neutral model, the durable store, the router and the policy.
//!
//! Front-ends translate their wire forms into [`message::Message`] and call
//! [`router::Core::submit`]; they read mailboxes through [`store::Store`]. The core opens no
//! sockets and knows no protocol.

pub mod address;
pub mod budget;
pub mod destinations;
pub mod discovery;
pub mod hashcash;
pub mod io;
pub mod login;
pub mod mailbox;
pub mod message;
pub mod metrics;
pub mod password;
pub mod pgp;
pub mod ratelimit;
pub mod relay;
pub mod router;
pub mod store;

pub use address::{Address, AddressError, ImidRef};
pub use budget::{BudgetError, MemoryBudget, Reservation};
pub use login::{LoginGuard, LoginLimits};
pub use message::{
    Importance, KeySource, Message, MessageId, MessageKind, Part, Security, SenderCheck, Tags,
    TraceHop, Verdicts,
};
pub use metrics::Metrics;
pub use router::{Core, LoginError, Origin, Policy, Receipt, SubmitError, Submitter};
pub use store::{PgOptions, PgStore, SqliteOptions, SqliteStore, Store, StoreError};
