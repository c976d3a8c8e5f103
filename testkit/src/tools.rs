//! External programs the tests drive. A missing one fails the test, saying what to install:
//! no test is ever skipped for want of a tool.

use std::path::PathBuf;
use std::process::Command;

/// The path of `name` on `PATH`; panics when it is not installed.
pub fn require(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("`{name}` is not installed: run scripts/install-test-tools.sh (CI does)")
    })
}

/// A command for `name`, which must be installed (see [`require`]).
pub fn tool(name: &str) -> Command {
    require(name);
    Command::new(name)
}
