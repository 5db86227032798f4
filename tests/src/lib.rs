//! mailgate-tests: end-to-end tests of the `mailgate` program over real sockets (in `tests/`),
//! the helper binaries they start (`mailgate-e2e`, the same program as `mailgate`, and
//! `crash-writer`), and the conformance suites (data in `conformance/`, embedded in the binary).
