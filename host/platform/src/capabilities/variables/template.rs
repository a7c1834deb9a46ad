//! Component variable templates: `"postgres://{{ user }}@host"` is a
//! literal, a reference to application variable `user`, and a literal.

use crate::manifest::check_variable_name;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    Literal(String),
    Variable(String),
}

/// Splits a template into literal and variable parts.
pub fn parse_template(template: &str) -> Result<Vec<TemplatePart>, String> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let (literal, after) = rest.split_at(start);
        if !literal.is_empty() {
            parts.push(TemplatePart::Literal(literal.to_string()));
        }
        let after = after.trim_start_matches("{{");
        let (name, tail) = after
            .split_once("}}")
            .ok_or_else(|| format!("unclosed `{{{{` in `{template}`"))?;
        let name = name.trim();
        check_variable_name(name)?;
        parts.push(TemplatePart::Variable(name.to_string()));
        rest = tail;
    }
    if !rest.is_empty() {
        parts.push(TemplatePart::Literal(rest.to_string()));
    }
    Ok(parts)
}

/// The application variables a template refers to.
pub fn references(template: &str) -> Result<Vec<String>, String> {
    Ok(parse_template(template)?
        .into_iter()
        .filter_map(|p| match p {
            TemplatePart::Variable(v) => Some(v),
            TemplatePart::Literal(_) => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_split_into_parts() {
        assert_eq!(
            parse_template("a{{ b }}c").unwrap(),
            vec![
                TemplatePart::Literal("a".into()),
                TemplatePart::Variable("b".into()),
                TemplatePart::Literal("c".into())
            ]
        );
        assert!(parse_template("{{ b").is_err());
    }
}
