//! The WSDL fixtures in `tests/fixtures/wsdl/`: each good one converts to its snapshot
//! (`NAME.yaml`, rewritten with `SWITCHBOARD_BLESS=1`) and the snapshot is valid metadata;
//! each bad one (`bad/NAME.wsdl`) fails with the exact text of `bad/NAME.expected`.

use std::path::{Path, PathBuf};

use super::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wsdl")
}

fn options(connection: &str) -> WsdlOptions {
    WsdlOptions {
        connection: connection.to_string(),
        allow_private_network: false,
    }
}

fn wsdl_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wsdl"))
        .collect();
    files.sort();
    files
}

fn stem(path: &Path) -> String {
    path.file_stem().unwrap().to_string_lossy().into_owned()
}

#[test]
fn every_style_converts_to_its_snapshot_and_the_snapshot_is_valid_metadata() {
    let bless = std::env::var("SWITCHBOARD_BLESS").is_ok_and(|v| v == "1");
    let files = wsdl_files(&fixtures());
    assert_eq!(files.len(), 3, "{files:?}");
    for file in files {
        let name = stem(&file);
        let yaml = convert(
            &std::fs::read(&file).unwrap(),
            &format!("{name}.wsdl"),
            &options(&name),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let snapshot = file.with_extension("yaml");
        if bless {
            std::fs::write(&snapshot, &yaml).unwrap();
        }
        let expected = std::fs::read_to_string(&snapshot).unwrap_or_else(|e| {
            panic!("{}: {e}; run with SWITCHBOARD_BLESS=1", snapshot.display())
        });
        assert_eq!(
            yaml, expected,
            "{name}: run with SWITCHBOARD_BLESS=1 if the change is right"
        );

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(format!("{name}.yaml")), &yaml).unwrap();
        match crate::metadata::Loader::new().load(dir.path()).unwrap() {
            Ok(metadata) => assert_eq!(metadata.connections.len(), 1),
            Err(problems) => panic!(
                "{name}: {}",
                problems
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        }
    }
}

#[test]
fn every_bad_wsdl_fails_with_its_expected_message_and_line() {
    let bless = std::env::var("SWITCHBOARD_BLESS").is_ok_and(|v| v == "1");
    let files = wsdl_files(&fixtures().join("bad"));
    assert!(files.len() >= 9, "{files:?}");
    for file in files {
        let name = stem(&file);
        let error = convert(&std::fs::read(&file).unwrap(), "bad.wsdl", &options("x"))
            .err()
            .unwrap_or_else(|| panic!("{name} converted"));
        let text = format!("{error}\n");
        let expected_file = file.with_extension("expected");
        if bless {
            std::fs::write(&expected_file, &text).unwrap();
        }
        let expected = std::fs::read_to_string(&expected_file)
            .unwrap_or_else(|e| panic!("{}: {e}", expected_file.display()));
        assert_eq!(text, expected, "{name}");
    }
}

#[test]
fn operation_names_become_function_names() {
    assert_eq!(function_name("CreateOrder"), "create_order");
    assert_eq!(function_name("getHTTPStatus"), "get_http_status");
    assert_eq!(function_name("Get-Quote.v2"), "get_quote_v2");
    assert_eq!(function_name("2Fast"), "op_2_fast");
}

#[test]
fn a_recursive_type_is_refused_not_followed_forever() {
    let wsdl = r#"<definitions xmlns="http://schemas.xmlsoap.org/wsdl/"
  xmlns:soap="http://schemas.xmlsoap.org/wsdl/soap/" xmlns:xs="http://www.w3.org/2001/XMLSchema"
  xmlns:tns="urn:x" targetNamespace="urn:x">
  <types><xs:schema targetNamespace="urn:x">
    <xs:complexType name="Node"><xs:sequence>
      <xs:element name="child" type="tns:Node" minOccurs="0"/>
    </xs:sequence></xs:complexType>
    <xs:element name="Tree" type="tns:Node"/>
  </xs:schema></types>
  <message name="In"><part name="p" element="tns:Tree"/></message>
  <portType name="P"><operation name="Op"><input message="tns:In"/></operation></portType>
  <binding name="B" type="tns:P"><soap:binding/>
    <operation name="Op"><input><soap:body use="literal"/></input></operation></binding>
  <service name="S"><port name="P" binding="tns:B"><soap:address location="https://x.example.com/"/></port></service>
</definitions>"#;
    let error = convert(wsdl.as_bytes(), "r.wsdl", &options("x")).unwrap_err();
    assert_eq!(error.line, 6);
    assert!(
        error
            .message
            .starts_with("types nest deeper than 32 levels"),
        "{error}"
    );
}
