//! The value of a `--model` flag: `factorial` (a built-in model by its name) or `NAME=COMMAND` (a
//! program run as an executable model).

use std::fmt;
use std::str::FromStr;

use herald_protocol::model::check_model_name;
use herald_protocol::FACTORIAL;

/// The models built into Herald, by name.
pub const BUILTIN_MODELS: &[&str] = &[FACTORIAL];

/// A model a worker is told to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSpec {
    /// A model built into Herald, by its name (one of [`BUILTIN_MODELS`]).
    Builtin(String),
    /// A program run as an executable model: jobs for `name` go to `command`.
    Program {
        /// The model's name, as jobs ask for it.
        name: String,
        /// The command line as given; [`command_words`] splits it as a POSIX shell would, but no
        /// shell runs it.
        command: String,
    },
}

impl ModelSpec {
    /// The model's name.
    pub fn name(&self) -> &str {
        match self {
            Self::Builtin(name) | Self::Program { name, .. } => name,
        }
    }
}

impl fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Builtin(name) => f.write_str(name),
            Self::Program { name, command } => write!(f, "{name}={command}"),
        }
    }
}

impl FromStr for ModelSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        parse_model_spec(s)
    }
}

/// Reads a `--model` value: `factorial` names the built-in model; `NAME=COMMAND` a program, with
/// `NAME` a valid model name (not a built-in one) and `COMMAND` a command line (quotes and
/// backslashes as in a POSIX shell; no shell runs it, so no `$VAR`, pipes or globs).
pub fn parse_model_spec(s: &str) -> Result<ModelSpec, String> {
    let Some((name, command)) = s.split_once('=') else {
        if BUILTIN_MODELS.contains(&s) {
            return Ok(ModelSpec::Builtin(s.to_owned()));
        }
        return Err(format!(
            "`{s}` is not a built-in model (built in: {}); a program is given as NAME=COMMAND, \
             for example sentiment=\"python3 examples/python/slow_sentiment.py\"",
            BUILTIN_MODELS.join(", ")
        ));
    };
    check_model_name(name).map_err(|e| format!("`{name}` is not a model name: {e}"))?;
    if BUILTIN_MODELS.contains(&name) {
        return Err(format!(
            "`{name}` is a built-in model's name: give the program another name"
        ));
    }
    command_words(command)?;
    Ok(ModelSpec::Program {
        name: name.to_owned(),
        command: command.to_owned(),
    })
}

/// A command line split into the program and its arguments.
pub fn command_words(command: &str) -> Result<Vec<String>, String> {
    let words = shell_words::split(command)
        .map_err(|e| format!("cannot read the command `{command}`: {e}"))?;
    if words.is_empty() {
        return Err("the command after `=` is empty".into());
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_and_programs() {
        assert_eq!(
            parse_model_spec("factorial"),
            Ok(ModelSpec::Builtin("factorial".into()))
        );
        let spec = parse_model_spec("sentiment=python3 'my models/s.py' --fast").unwrap();
        assert_eq!(spec.name(), "sentiment");
        assert_eq!(
            spec.to_string(),
            "sentiment=python3 'my models/s.py' --fast"
        );
        let ModelSpec::Program { command, .. } = spec else {
            panic!("a program")
        };
        assert_eq!(
            command_words(&command).unwrap(),
            ["python3", "my models/s.py", "--fast"]
        );
        // Only the first `=` separates: the command may hold more.
        assert_eq!(
            "e=python3 m.py --x=1".parse::<ModelSpec>(),
            Ok(ModelSpec::Program {
                name: "e".into(),
                command: "python3 m.py --x=1".into()
            })
        );
    }

    #[test]
    fn bad_values_are_explained() {
        let cases = [
            ("sentiment", "not a built-in model"),
            ("", "not a built-in model"),
            ("Sentiment=python3 s.py", "not a model name"),
            ("=python3 s.py", "not a model name"),
            ("a b=python3 s.py", "not a model name"),
            ("factorial=python3 f.py", "built-in model's name"),
            ("s=", "empty"),
            ("s=   ", "empty"),
            ("s=python3 'unclosed", "cannot read the command"),
        ];
        for (value, why) in cases {
            match parse_model_spec(value) {
                Err(message) => assert!(message.contains(why), "{value}: {message}"),
                Ok(spec) => panic!("{value}: {spec:?}"),
            }
        }
    }
}
