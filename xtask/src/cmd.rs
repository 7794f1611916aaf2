//! Running programs: each command is echoed before it runs, and a failure names it.

use std::env;
use std::process::{Command, ExitStatus};

use anyhow::{ensure, Context, Result};

/// Runs `command` to completion; fails if it cannot start or exits unsuccessfully.
pub fn run(command: &mut Command) -> Result<()> {
    let status = status(command)?;
    ensure!(status.success(), "`{}` failed ({status})", show(command));
    Ok(())
}

/// Runs `command` to completion and returns its exit status; fails only if it cannot start.
pub fn status(command: &mut Command) -> Result<ExitStatus> {
    println!("$ {}", show(command));
    command.status().with_context(|| format!("Cannot run `{}`", show(command)))
}

/// A `cargo` command: the cargo running xtask (`$CARGO`), else `cargo` on `PATH`.
pub fn cargo() -> Command {
    Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// `command` as a shell line, with the environment variables it sets.
pub fn show(command: &Command) -> String {
    let envs = command.get_envs().filter_map(|(key, value)| {
        Some(format!("{}={}", key.to_string_lossy(), quote(&value?.to_string_lossy())))
    });
    let program = std::iter::once(quote(&command.get_program().to_string_lossy()));
    let args = command.get_args().map(|arg| quote(&arg.to_string_lossy()));
    envs.chain(program).chain(args).collect::<Vec<_>>().join(" ")
}

/// `word` as the shell would need it: single-quoted if it holds anything but plain characters.
fn quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./=:,@+%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_quotes_what_the_shell_would_split_or_expand() {
        let mut command = Command::new("pip");
        command.env("A", "x y").args(["install", "boto3>=1,<2", "it's", ""]);
        assert_eq!(show(&command), r"A='x y' pip install 'boto3>=1,<2' 'it'\''s' ''");
    }
}
