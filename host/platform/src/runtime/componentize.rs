//! What the host does to a binary before compiling it, so apps built for
//! Spin run unmodified:
//!
//! - **Core modules become components**, as Spin does for apps built with
//!   spin-sdk 1.x–3.x (and any other `wasm32-wasip1` toolchain): the
//!   module's WASI preview1 imports are adapted to WASI 0.2 with wasmtime's
//!   own adapter, and its `component-type` sections (the Spin world it was
//!   built against) become the component's imports and exports.
//! - **WASI 0.3 release candidates are named as the release**: spin-sdk 6
//!   (Spin 4.0) builds against `wasi:*@0.3.0-rc-2026-03-15`, whose
//!   interfaces are the 0.3.0 release's that wasmtime 48 serves. The names
//!   are rewritten consistently (imports, exports, instantiation arguments,
//!   aliases); wasmtime then type-checks every import against the host's
//!   definitions, so a candidate that differed would fail to link with
//!   wasmtime's own message rather than misbehave.

use anyhow::{Context, Result};
use std::borrow::Cow;
use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
    WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
};
use wasm_encoder::reencode::{Error as ReencodeError, Reencode, ReencodeComponent};

/// The WASI 0.3 release candidates served as the 0.3.0 release.
const WASIP3_CANDIDATES: &[&str] = &["@0.3.0-rc-2026-03-15"];

/// `wasm` as a component this host can link: unchanged when it already is
/// one, adapted or renamed when it needs to be.
pub fn normalize(wasm: &[u8]) -> Result<Cow<'_, [u8]>> {
    let component = if wasmparser::Parser::is_core_wasm(wasm) {
        Cow::Owned(componentize(wasm)?)
    } else {
        Cow::Borrowed(wasm)
    };
    let candidate = WASIP3_CANDIDATES
        .iter()
        .any(|rc| contains(&component, rc.as_bytes()));
    if !candidate {
        return Ok(component);
    }
    let mut out = wasm_encoder::Component::new();
    ReleaseNames
        .parse_component(&mut out, wasmparser::Parser::new(0), &component)
        .map_err(|e| anyhow::anyhow!("renaming WASI 0.3 release-candidate interfaces: {e}"))?;
    Ok(Cow::Owned(out.finish()))
}

fn componentize(wasm: &[u8]) -> Result<Vec<u8>> {
    // A module with `_start` is a command; anything else (an HTTP handler
    // built as a cdylib) is a reactor.
    let adapter = if exports_start(wasm) {
        WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER
    } else {
        WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER
    };
    wit_component::ComponentEncoder::default()
        .validate(true)
        .module(wasm)
        .context("reading the module's component-type sections")?
        .adapter(WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, adapter)
        .context("loading the WASI preview1 adapter")?
        .encode()
        .context("turning the core module into a component")
}

fn exports_start(wasm: &[u8]) -> bool {
    wasmparser::Parser::new(0).parse_all(wasm).any(|payload| {
        matches!(payload, Ok(wasmparser::Payload::ExportSection(exports))
            if exports.clone().into_iter().any(|e| e.is_ok_and(|e| e.name == "_start")))
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// `name` with a release-candidate version replaced by the release.
fn released(name: &str) -> Cow<'_, str> {
    WASIP3_CANDIDATES
        .iter()
        .find_map(|rc| name.strip_suffix(rc))
        .map_or(Cow::Borrowed(name), |base| {
            Cow::Owned(format!("{base}@0.3.0"))
        })
}

fn extern_name(name: wasmparser::ComponentExternName<'_>) -> wasm_encoder::ComponentExternName<'_> {
    let mut out = wasm_encoder::ComponentExternName::from(name);
    if let Cow::Owned(renamed) = released(&out.name) {
        out.name = Cow::Owned(renamed);
    }
    out
}

/// A re-encoder that renames every place a component names an import or
/// export; everything else is copied as it is.
struct ReleaseNames;

impl Reencode for ReleaseNames {
    type Error = std::convert::Infallible;
}

impl ReencodeComponent for ReleaseNames {
    fn parse_component_import_section(
        &mut self,
        imports: &mut wasm_encoder::ComponentImportSection,
        section: wasmparser::ComponentImportSectionReader<'_>,
    ) -> Result<(), ReencodeError<Self::Error>> {
        for import in section {
            let import = import?;
            let ty = self.component_type_ref(import.ty)?;
            imports.import(extern_name(import.name), ty);
        }
        Ok(())
    }

    fn parse_component_export(
        &mut self,
        exports: &mut wasm_encoder::ComponentExportSection,
        export: wasmparser::ComponentExport<'_>,
    ) -> Result<(), ReencodeError<Self::Error>> {
        let index = self.component_external_index(export.kind, export.index);
        let ty = export.ty.map(|t| self.component_type_ref(t)).transpose()?;
        exports.export(extern_name(export.name), export.kind.into(), index, ty);
        Ok(())
    }

    fn parse_component_instance(
        &mut self,
        instances: &mut wasm_encoder::ComponentInstanceSection,
        instance: wasmparser::ComponentInstance<'_>,
    ) -> Result<(), ReencodeError<Self::Error>> {
        match instance {
            wasmparser::ComponentInstance::Instantiate {
                component_index,
                args,
            } => {
                let args: Vec<_> = args
                    .iter()
                    .map(|arg| {
                        let index = self.component_external_index(arg.kind, arg.index);
                        (released(arg.name).into_owned(), arg.kind.into(), index)
                    })
                    .collect();
                instances.instantiate(self.component_index(component_index), args);
            }
            wasmparser::ComponentInstance::FromExports(exports) => {
                let items: Vec<_> = exports
                    .iter()
                    .map(|export| {
                        let index = self.component_external_index(export.kind, export.index);
                        (
                            released(export.name.name).into_owned(),
                            export.kind.into(),
                            index,
                        )
                    })
                    .collect();
                instances.export_items(items);
            }
        }
        Ok(())
    }

    fn parse_component_alias_section(
        &mut self,
        aliases: &mut wasm_encoder::ComponentAliasSection,
        section: wasmparser::ComponentAliasSectionReader<'_>,
    ) -> Result<(), ReencodeError<Self::Error>> {
        for alias in section {
            match alias? {
                wasmparser::ComponentAlias::InstanceExport {
                    kind,
                    instance_index,
                    name,
                } => {
                    let name = released(name);
                    aliases.alias(wasm_encoder::Alias::InstanceExport {
                        instance: self.component_instance_index(instance_index),
                        kind: kind.into(),
                        name: &name,
                    });
                }
                other => {
                    aliases.alias(self.component_alias(other)?);
                }
            }
        }
        Ok(())
    }
}
