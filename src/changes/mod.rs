//! The capture side: reading `rowcast.changes` and knowing the enabled tables.
//!
//! - `change`: the change type and its `data` rendering (pure).
//! - `window`: which log ids are safe to deliver (pure).
//! - `tables`: the enabled-table cache.
//! - `listener`: the reader task (LISTEN, read, reconnect, prune).
//! - `watch`: the capture horizon of tables captured only while watched.

pub mod change;
pub mod listener;
pub mod tables;
pub mod watch;
pub mod window;
