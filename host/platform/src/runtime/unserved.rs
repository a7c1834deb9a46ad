//! Spin interfaces this host does not serve yet (Postgres, outbound Redis,
//! MQTT, LLM). A Spin app that imports one still starts, as it would on
//! Spin; each call answers the interface's own error ("not available on
//! this host yet") instead of the app failing to link, so only the feature
//! that needs the missing backend fails.

use anyhow::Result;
use wasmtime::Engine;
use wasmtime::component::types::{ComponentFunc, ComponentItem, Type};
use wasmtime::component::{Component, Linker, ResourceType, Val};

/// Import-name prefixes of the interfaces stubbed, and what they are.
const UNSERVED: &[(&str, &str)] = &[
    ("fermyon:spin/postgres@", "PostgreSQL"),
    ("spin:postgres/", "PostgreSQL"),
    ("fermyon:spin/redis@", "outbound Redis"),
    ("spin:redis/", "outbound Redis"),
    ("fermyon:spin/mqtt@", "MQTT"),
    ("spin:mqtt/", "MQTT"),
    ("fermyon:spin/llm@", "LLM inferencing"),
];

/// The resource type stubbed resources get; none is ever created, since
/// every constructor fails.
struct Unserved;

/// Which of `component`'s imports are unserved interfaces: (import, what).
pub fn imports(engine: &Engine, component: &Component) -> Vec<(String, &'static str)> {
    component
        .component_type()
        .imports(engine)
        .filter_map(|(name, _)| {
            UNSERVED
                .iter()
                .find(|(prefix, _)| name.starts_with(prefix))
                .map(|(_, what)| (name.to_string(), *what))
        })
        .collect()
}

/// Defines stubs in `linker` for every unserved interface `component`
/// imports.
pub fn define<T: 'static>(
    linker: &mut Linker<T>,
    engine: &Engine,
    component: &Component,
) -> Result<()> {
    for (name, item) in component.component_type().imports(engine) {
        let Some((_, what)) = UNSERVED.iter().find(|(p, _)| name.starts_with(p)) else {
            continue;
        };
        let ComponentItem::ComponentInstance(instance) = item.ty else {
            continue;
        };
        let message = format!(
            "{name}: {what} is not available on this host yet (Spindle links it so the app starts; calls fail)"
        );
        let mut root = linker.root();
        let mut stub = root.instance(name)?;
        for (export, item) in instance.exports(engine) {
            match item.ty {
                ComponentItem::Resource(_) => {
                    stub.resource(export, ResourceType::host::<Unserved>(), |_, _| Ok(()))?
                }
                ComponentItem::ComponentFunc(ty) if ty.async_() => {
                    let message = message.clone();
                    stub.func_new_concurrent(export, move |_, ty, _, results| {
                        let answered = fail(&ty, results, &message);
                        Box::pin(async move { answered })
                    })?
                }
                ComponentItem::ComponentFunc(_) => {
                    let message = message.clone();
                    stub.func_new(export, move |_, ty, _, results| {
                        fail(&ty, results, &message)
                    })?
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Answers with the function's own error type when it has one (a
/// `result<_, variant>` with a string case), and traps with `message`
/// otherwise.
fn fail(ty: &ComponentFunc, results: &mut [Val], message: &str) -> wasmtime::Result<()> {
    let error = ty.results().next().and_then(|result| match result {
        Type::Result(r) => match r.err() {
            Some(Type::Variant(v)) => {
                let cases: Vec<_> = v.cases().map(|c| (c.name.to_string(), c.ty)).collect();
                let string_case = |name: &str| {
                    cases
                        .iter()
                        .find(|(n, t)| n == name && matches!(t, Some(Type::String)))
                };
                string_case("other")
                    .or_else(|| string_case("connection-failed"))
                    .or_else(|| cases.iter().find(|(_, t)| matches!(t, Some(Type::String))))
                    .map(|(case, _)| {
                        Val::Variant(case.clone(), Some(Box::new(Val::String(message.into()))))
                    })
            }
            _ => None,
        },
        _ => None,
    });
    match (error, results.first_mut()) {
        (Some(error), Some(slot)) => {
            *slot = Val::Result(Err(Some(Box::new(error))));
            Ok(())
        }
        _ => Err(wasmtime::Error::msg(message.to_string())),
    }
}
