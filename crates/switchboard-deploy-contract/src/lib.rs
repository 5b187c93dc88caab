//! What the deployment contract checks (`tests/deploy_contract.rs`) read and run:
//! the repository's deployment files ([`files`]) and the `switchboard` binary,
//! started the way they start it ([`node`]).

pub mod files;
pub mod node;
