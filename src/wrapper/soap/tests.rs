use std::time::{Duration, UNIX_EPOCH};

use super::*;

fn fault(text: &str) -> Fault {
    let root = xml::parse(text.as_bytes()).expect("well-formed");
    let soap12 = root.namespace.as_deref() == Some(SOAP12);
    let body = root.child_named("Body").expect("a body");
    Fault::read(body.child_named("Fault").expect("a fault"), soap12)
}

#[test]
fn soap11_client_faults_are_rejected_and_server_faults_retried() {
    let client = fault(
        r#"<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body><e:Fault>
        <faultcode>e:Client.BadInput</faultcode><faultstring>no such account</faultstring>
        </e:Fault></e:Body></e:Envelope>"#,
    );
    assert_eq!(client.code, "Client.BadInput");
    assert_eq!(client.kind(), ErrorKind::Rejected);
    let redactor = Redactor::with_xml_escapes(Vec::new());
    assert_eq!(
        client.error("erp", &redactor).message,
        "`erp` answered with SOAP fault `Client.BadInput`: no such account"
    );
    let server = fault(
        r#"<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body><e:Fault>
        <faultcode>e:Server</faultcode><faultstring>database down</faultstring>
        </e:Fault></e:Body></e:Envelope>"#,
    );
    assert_eq!(server.kind(), ErrorKind::Unavailable);
}

#[test]
fn soap12_sender_faults_are_rejected_and_receiver_faults_retried() {
    let sender = fault(
        r#"<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope"><env:Body><env:Fault>
        <env:Code><env:Value>env:Sender</env:Value><env:Subcode><env:Value>m:BadInput</env:Value></env:Subcode></env:Code>
        <env:Reason><env:Text xml:lang="en">bad account</env:Text></env:Reason>
        </env:Fault></env:Body></env:Envelope>"#,
    );
    assert_eq!(
        sender,
        Fault {
            code: "Sender".into(),
            subcode: Some("BadInput".into()),
            reason: "bad account".into()
        }
    );
    assert_eq!(sender.kind(), ErrorKind::Rejected);
    let receiver = fault(
        r#"<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope"><env:Body><env:Fault>
        <env:Code><env:Value>env:Receiver</env:Value></env:Code>
        <env:Reason><env:Text xml:lang="en">busy</env:Text></env:Reason>
        </env:Fault></env:Body></env:Envelope>"#,
    );
    assert_eq!(receiver.kind(), ErrorKind::Unavailable);
}

#[test]
fn password_digest_matches_the_username_token_profile() {
    let token = UsernameToken {
        username: "crm-ws".into(),
        password: Secret::new("pa&ss<word>"),
        digest: true,
    };
    let created = UNIX_EPOCH + Duration::from_secs(1_767_323_045); // 2026-01-02T03:04:05Z
    let nonce: Vec<u8> = (0u8..16).collect();
    let header = token.render(created, &nonce).expect("renders");
    // Computed independently: base64(sha1(nonce + created + password)).
    assert!(
        header.contains(">pLhXOV7H5Baq5R8FcoYRap35xh8=</wsse:Password>"),
        "{header}"
    );
    assert!(
        header.contains(">AAECAwQFBgcICQoLDA0ODw==</wsse:Nonce>"),
        "{header}"
    );
    assert!(
        header.contains("<wsu:Created>2026-01-02T03:04:05Z</wsu:Created>"),
        "{header}"
    );
    assert!(!header.contains("pa&ss"), "{header}");
}

#[test]
fn password_text_is_escaped() {
    let token = UsernameToken {
        username: "a<b".into(),
        password: Secret::new("pa&ss<word>"),
        digest: false,
    };
    let header = token.render(UNIX_EPOCH, &[1, 2, 3]).expect("renders");
    assert!(
        header.contains("<wsse:Username>a&lt;b</wsse:Username>"),
        "{header}"
    );
    assert!(
        header.contains("#PasswordText\">pa&amp;ss&lt;word&gt;</wsse:Password>"),
        "{header}"
    );
}

#[test]
fn body_templates_escape_every_printed_value() {
    let mut env = environment();
    env.add_template_owned(
        "t",
        "<a x=\"{{ input.v }}\">{{ input.v | safe }}{{ input.n }}</a>".to_string(),
    )
    .expect("compiles");
    let cx = template_value(
        &serde_json::json!({ "input": { "v": "</a><evil a=\"1\"/>&", "n": true } }),
        0,
    )
    .expect("converts");
    let out = env
        .get_template("t")
        .and_then(|t| t.render(cx))
        .expect("renders");
    assert_eq!(
        out,
        "<a x=\"&lt;/a&gt;&lt;evil a=&quot;1&quot;/&gt;&amp;\">&lt;/a&gt;&lt;evil a=&quot;1&quot;/&gt;&amp;true</a>"
    );
    let bad = template_value(&serde_json::json!({ "input": { "v": "\u{0}", "n": 1 } }), 0)
        .expect("converts");
    assert!(env.get_template("t").and_then(|t| t.render(bad)).is_err());
}

#[test]
fn body_templates_read_settings_and_call_helpers_escaped() {
    let mut env = environment();
    env.add_template_owned(
        "t",
        "<Find company=\"{{ settings.company }}\"><Since>{{ input.since | dateformat(format='%Y%m%d') }}</Since><Note>{{ input.note | b64decode }}</Note></Find>"
            .to_string(),
    )
    .expect("compiles");
    let cx = template_value(
        &serde_json::json!({
            "input": { "since": "2024-03-05", "note": "PGI+JmM=" },
            "settings": { "company": "R&D \"1000\"" },
        }),
        0,
    )
    .expect("converts");
    let out = env
        .get_template("t")
        .and_then(|t| t.render(cx))
        .expect("renders");
    assert_eq!(
        out,
        "<Find company=\"R&amp;D &quot;1000&quot;\"><Since>20240305</Since><Note>&lt;b&gt;&amp;c</Note></Find>"
    );
}
