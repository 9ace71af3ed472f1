//! The committed CRD YAML matches what the Rust types generate, and `agentgate-operator crds`
//! prints every CRD.

use std::process::Command;

use agentgate_crds::generate;
use agentgate_e2e::{binary, workspace_root};

#[test]
fn committed_crd_files_match_the_generated_ones() {
    let regenerate = "regenerate with: cargo run -p agentgate-operator -- crds --out-dir crds --out-dir charts/agentgate/files/crds";
    for dir in ["crds", "charts/agentgate/files/crds"] {
        for crd in generate::all_crds() {
            let path = workspace_root().join(dir).join(generate::file_name(&crd));
            let committed = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}; {regenerate}", path.display()));
            assert!(
                committed == generate::to_yaml(&crd),
                "{} is stale; {regenerate}",
                path.display()
            );
        }
        let yaml_files = std::fs::read_dir(workspace_root().join(dir))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "yaml")
            })
            .count();
        assert_eq!(
            yaml_files,
            generate::all_crds().len(),
            "{dir} holds a CRD file no type generates"
        );
    }
}

#[test]
fn the_operator_prints_every_crd() {
    let out = Command::new(binary("agentgate-operator"))
        .arg("crds")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let docs: Vec<serde_json::Value> = text
        .split("\n---\n")
        .map(|d| serde_saphyr::from_str(d).expect("each document parses"))
        .collect();
    let names: Vec<&str> = docs
        .iter()
        .map(|d| d["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "agentgateways.agentgate.dev",
            "connections.agentgate.dev",
            "agentidentities.agentgate.dev",
            "accesspolicies.agentgate.dev",
            "approvalrequests.agentgate.dev"
        ]
    );
    for d in &docs {
        assert_eq!(d["kind"], "CustomResourceDefinition");
        assert_eq!(d["spec"]["versions"][0]["name"], "v1alpha1");
    }
}
