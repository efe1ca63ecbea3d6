//! Header names of protocol v1. Lower case, as HTTP/1.1 and `http` compare
//! them case-insensitively and HTTP/2 requires it.

/// 40 lowercase hex characters: the code commit that produced the episode.
pub const COMMIT: &str = "x-ferry-commit";
/// 64 lowercase hex characters: sha256 of the request body (PUT) or of the
/// stored object (HEAD answer).
pub const SHA256: &str = "x-ferry-sha256";
/// Set by the receiver on every answer so that clients and logs can tell
/// which protocol version answered.
pub const PROTOCOL: &str = "x-ferry-protocol";
/// Value of [`PROTOCOL`].
pub const PROTOCOL_VERSION: &str = "1";
