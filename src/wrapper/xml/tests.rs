use serde_json::json;

use super::*;

fn json_of(text: &str) -> Value {
    to_json(&parse(text.as_bytes()).expect("well-formed XML"))
}

#[test]
fn names_are_local_repeated_elements_are_arrays_and_attributes_are_kept() {
    let doc = r#"<?xml version="1.0"?>
        <a:Order xmlns:a="urn:a" xmlns:b="urn:b" id="7" b:rev="2">
          <a:Customer>Acme &amp; Sons</a:Customer>
          <b:Line sku="X1"><a:Qty>2</a:Qty></b:Line>
          <b:Line sku="X2"><a:Qty>3</a:Qty></b:Line>
          <a:Note><![CDATA[<raw> & text]]></a:Note>
          <a:Empty/>
          <a:Priced currency="EUR">12.50</a:Priced>
        </a:Order>"#;
    assert_eq!(
        json_of(doc),
        json!({
            "@id": "7",
            "@rev": "2",
            "Customer": "Acme & Sons",
            "Line": [
                { "@sku": "X1", "Qty": "2" },
                { "@sku": "X2", "Qty": "3" },
            ],
            "Note": "<raw> & text",
            "Empty": "",
            "Priced": { "@currency": "EUR", "#text": "12.50" },
        })
    );
}

#[test]
fn xsi_nil_is_null_and_xsi_attributes_are_not_data() {
    let doc = r#"<r xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
        <gone xsi:nil="true"/><n xsi:type="xs:int">5</n></r>"#;
    assert_eq!(json_of(doc), json!({ "gone": null, "n": "5" }));
}

#[test]
fn character_references_are_resolved() {
    assert_eq!(
        json_of("<r>&#65;&#x42;&lt;&gt;&apos;&quot;</r>"),
        json!("AB<>'\"")
    );
}

#[test]
fn a_doctype_is_refused_before_any_entity_is_read() {
    let external =
        r#"<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>"#;
    assert_eq!(parse(external.as_bytes()), Err(XmlError::Doctype));
    let laughs = r#"<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]><lolz>&lol2;</lolz>"#;
    assert_eq!(parse(laughs.as_bytes()), Err(XmlError::Doctype));
}

#[test]
fn an_undeclared_entity_is_refused() {
    assert_eq!(
        parse(b"<r>&nbsp;</r>"),
        Err(XmlError::UnknownEntity("nbsp".to_string()))
    );
    assert_eq!(
        parse(b"<r a='&x;'/>"),
        Err(XmlError::UnknownEntity("x".to_string()))
    );
}

#[test]
fn nesting_is_bounded() {
    let ok = format!("{}{}", "<a>".repeat(MAX_DEPTH), "</a>".repeat(MAX_DEPTH));
    assert!(parse(ok.as_bytes()).is_ok());
    let deep = format!("{}{}", "<a>".repeat(10_000), "</a>".repeat(10_000));
    assert_eq!(parse(deep.as_bytes()), Err(XmlError::TooDeep));
}

#[test]
fn truncated_malformed_and_non_xml_documents_say_what_is_wrong() {
    assert_eq!(
        parse(b"<r><item>1</item><item>"),
        Err(XmlError::Truncated("item".to_string()))
    );
    assert!(
        matches!(parse(b"<r><a></b></r>"), Err(XmlError::Malformed { .. })),
        "{:?}",
        parse(b"<r><a></b></r>")
    );
    assert_eq!(
        parse(b"{\"ok\": true}"),
        Err(XmlError::NotXml("{\"ok\": true}".to_string()))
    );
    assert_eq!(parse(b"   "), Err(XmlError::Empty));
    assert_eq!(parse(&[0x3c, 0xff, 0xfe]), Err(XmlError::NotUtf8));
    assert!(matches!(
        parse(b"<r/><r/>"),
        Err(XmlError::Malformed { .. })
    ));
    assert!(matches!(parse(b"<p:r/>"), Err(XmlError::Malformed { .. })));
}

#[test]
fn messages_name_the_problem() {
    assert_eq!(
        XmlError::Doctype.to_string(),
        "the answer declares a DOCTYPE, which is refused: no DTD or entity is ever read"
    );
    assert_eq!(
        XmlError::Truncated("item".into()).to_string(),
        "the answer ends before element <item> is closed: the XML is truncated"
    );
    assert_eq!(
        XmlError::TooDeep.to_string(),
        "the answer nests elements deeper than 128 levels"
    );
}

#[test]
fn schema_types_text_and_makes_lone_items_arrays() {
    let schema = json!({
        "type": "object",
        "properties": {
            "count": { "type": "integer" },
            "total": { "type": "number" },
            "rush": { "type": "boolean" },
            "code": { "type": "string" },
            "maybe": { "type": ["integer", "null"] },
            "skus": { "type": "array", "items": { "type": "string" } },
            "lines": {
                "type": "array",
                "items": { "type": "object", "properties": { "qty": { "type": "integer" } } },
            },
            "odd": { "type": "number" },
        },
    });
    let value = json!({
        "count": "3",
        "total": "12.50",
        "rush": "1",
        "code": "007",
        "maybe": "",
        "skus": "A",
        "lines": { "qty": "2" },
        "odd": "NaN",
        "extra": "9",
    });
    assert_eq!(
        typed(value, &schema),
        json!({
            "count": 3,
            "total": 12.5,
            "rush": true,
            "code": "007",
            "maybe": null,
            "skus": ["A"],
            "lines": [{ "qty": 2 }],
            "odd": "NaN",
            "extra": "9",
        })
    );
}

#[test]
fn pointers_reach_into_lone_elements_as_one_item_lists() {
    let value = json!({ "r": { "item": { "id": "1" }, "many": [{ "id": "a" }, { "id": "b" }] } });
    assert_eq!(pointer(&value, "/r/item/0/id"), Some(&json!("1")));
    assert_eq!(pointer(&value, "/r/many/1/id"), Some(&json!("b")));
    assert_eq!(pointer(&value, "/r/item/1/id"), None);
    assert_eq!(pointer(&value, ""), Some(&value));
    assert_eq!(pointer(&json!({ "a/b": 1 }), "/a~1b"), Some(&json!(1)));
}

#[test]
fn escape_writes_markup_as_text_and_refuses_control_characters() {
    let mut out = String::new();
    escape("<a href='x'>&\"</a>", &mut out).expect("escapable");
    assert_eq!(out, "&lt;a href=&apos;x&apos;&gt;&amp;&quot;&lt;/a&gt;");
    let mut out = String::new();
    assert_eq!(
        escape("bell\u{7}", &mut out),
        Err("U+0007 cannot be written in XML 1.0".to_string())
    );
}

/// Found by `fuzz/fuzz_targets/xml_to_json.rs`: a carriage return written raw read back as a
/// line feed, and a tab or line break in an attribute as a space.
#[test]
fn fuzz_regression_escaped_white_space_reads_back_unchanged() {
    let text = "a < b & c > \"d\" 'e'\t\n\r\n";
    let mut escaped = String::new();
    escape(text, &mut escaped).expect("escapable");
    assert_eq!(
        escaped,
        "a &lt; b &amp; c &gt; &quot;d&quot; &apos;e&apos;&#9;&#10;&#13;&#10;"
    );
    let root = parse(format!("<a b=\"{escaped}\">{escaped}</a>").as_bytes()).expect("well-formed");
    assert_eq!(root.text, text);
    assert_eq!(root.attributes[0].value, text);
}
