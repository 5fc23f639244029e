pub(crate) mod memory;
pub(crate) mod transforms;
pub(crate) mod init;
pub(crate) mod state;
pub(crate) mod engine;
pub(crate) mod instance;
pub(crate) mod look_back;
pub(crate) mod limiter;
pub use engine::{SmartEngine, SmartModuleChainBuilder, SmartModuleChainInstance};

use super::*;
