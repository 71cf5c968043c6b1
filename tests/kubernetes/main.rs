//! The Kubernetes examples parse as YAML and agree with each other and with
//! the discovery strategies: the StatefulSets use the headless Service, the
//! Service's port is what the SRV strategy asks for, and each ConfigMap's
//! `quicmesh.toml` is a valid node config whose topology names that Service.

use std::path::Path;

use quicmesh::NodeConfig;
use quicmesh::discovery::TopologyConfig;
use yaml_rust2::{Yaml, YamlLoader};

fn load(file: &str) -> Vec<Yaml> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/kubernetes")
        .join(file);
    let text = std::fs::read_to_string(&path).expect("example exists");
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{file}: invalid YAML: {e}"))
}

fn kind<'a>(docs: &'a [Yaml], kind: &str) -> &'a Yaml {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind}"))
}

fn text<'a>(y: &'a Yaml, what: &str) -> &'a str {
    y.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {y:?}"))
}

#[test]
fn kubernetes_examples_are_valid_and_consistent() {
    let service_docs = load("headless-service.yaml");
    let service = kind(&service_docs, "Service");
    let service_name = text(&service["metadata"]["name"], "service name");
    assert_eq!(
        service["spec"]["clusterIP"].as_str(),
        Some("None"),
        "headless"
    );
    let port = &service["spec"]["ports"][0];
    assert_eq!(
        port["name"].as_str(),
        Some("quicmesh"),
        "the SRV strategy's default port_name"
    );
    assert_eq!(port["protocol"].as_str(), Some("UDP"));
    assert_eq!(
        port["port"].as_i64(),
        Some(i64::from(quicmesh::DEFAULT_PORT))
    );

    for (file, srv) in [("cookie-mode.yaml", false), ("certificate-mode.yaml", true)] {
        let docs = load(file);
        for doc in &docs {
            assert!(doc["apiVersion"].as_str().is_some(), "{file}: apiVersion");
            assert!(
                doc["metadata"]["name"].as_str().is_some(),
                "{file}: metadata.name"
            );
        }
        let set = kind(&docs, "StatefulSet");
        assert_eq!(
            set["spec"]["serviceName"].as_str(),
            Some(service_name),
            "{file}"
        );
        assert_eq!(
            set["spec"]["template"]["metadata"]["labels"]["app"],
            service["spec"]["selector"]["app"],
            "{file}: the Service selects the pods"
        );
        let container = &set["spec"]["template"]["spec"]["containers"][0];
        let args: Vec<&str> = container["args"]
            .as_vec()
            .expect("args")
            .iter()
            .map(|a| text(a, "arg"))
            .collect();
        assert_eq!(
            &args[..3],
            ["node", "--config", "/etc/quicmesh/quicmesh.toml"],
            "{file}"
        );
        let name_arg = args[args.iter().position(|a| *a == "--name").expect("--name") + 1];
        assert!(name_arg.starts_with("my_app@"), "{file}: {name_arg}");
        assert_eq!(container["ports"][0]["protocol"].as_str(), Some("UDP"));

        // The config file, with a name as the command line would give it.
        let config_map = kind(&docs, "ConfigMap");
        let toml = text(&config_map["data"]["quicmesh.toml"], "quicmesh.toml");
        let example_name = if srv {
            "my_app@my-app-0.my-app-headless.default.svc.cluster.local"
        } else {
            "my_app@10.1.2.3"
        };
        let config = NodeConfig::from_toml(&format!("name = \"{example_name}\"\n{toml}"))
            .unwrap_or_else(|e| panic!("{file}: quicmesh.toml: {e}"));
        config.validate().expect("valid config");
        let [topology] = config.topologies.values().collect::<Vec<_>>()[..] else {
            panic!("{file}: one topology");
        };
        match (topology, srv) {
            (
                TopologyConfig::KubernetesDns {
                    service,
                    application_name,
                    ..
                },
                false,
            )
            | (
                TopologyConfig::KubernetesDnsSrv {
                    service,
                    application_name,
                    ..
                },
                true,
            ) => {
                assert_eq!(service, "my-app-headless", "{file}");
                assert!(
                    name_arg.starts_with(&format!("{application_name}@")),
                    "{file}"
                );
            }
            other => panic!("{file}: unexpected topology {other:?}"),
        }
    }
}
