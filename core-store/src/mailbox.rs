//! The mailbox model: the folders every account has, whatever the store behind it.

/// The inbox: where mail goes when the recipient names no folder (or one it does not have).
pub const INBOX: &str = "INBOX";

/// Folders every account has from its creation on (compared case-insensitively).
pub const STANDARD_FOLDERS: [&str; 5] = [INBOX, "SENT", "DRAFTS", "JUNK", PUSH];

/// The folder push notifications go to instead of the inbox.
pub const PUSH: &str = "PUSH";

/// Is `name` one of [`STANDARD_FOLDERS`] (any case)?
pub fn is_standard_folder(name: &str) -> bool {
    STANDARD_FOLDERS
        .iter()
        .any(|f| f.eq_ignore_ascii_case(name))
}
