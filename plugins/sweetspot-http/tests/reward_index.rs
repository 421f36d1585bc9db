//! The `http` reward against a loopback `/classify` that answers in shapes a service may use:
//! results in another order are put on the rows their `index` names; an `index` that is a
//! string, a float, missing, out of range or repeated is refused with the result and the value.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use sweetspot_core::{
    BuildContext, NoProgress, Prompt, PromptContent, RewardModel, RewardModelConfig, Sample,
    SampleGroup,
};
use sweetspot_http::HttpRewardConfig;

/// A `/classify` endpoint that answers `answer` (set by the test) to every request.
fn server(answer: Arc<Mutex<Value>>) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let app = axum::Router::new().route(
                "/classify",
                axum::routing::post(move || {
                    let a = answer.lock().unwrap().clone();
                    async move { axum::Json(a) }
                }),
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    format!("http://{}", rx.recv().unwrap())
}

fn reward(url: &str) -> Box<dyn RewardModel> {
    let fixture =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/seq-cls");
    let config: HttpRewardConfig = toml::from_str(&format!(
        "endpoints = [{url:?}]\nmodel = \"rm\"\ntokenizer = {:?}\nbatch_size = 3\n\
         max_retries = 0\ntimeout_s = 20",
        fixture
    ))
    .unwrap();
    config.build(&BuildContext::new(".")).unwrap()
}

fn group() -> SampleGroup {
    SampleGroup {
        prompt: Prompt {
            id: "p".into(),
            content: PromptContent::Text("a cat".into()),
        },
        samples: (0..3)
            .map(|i| Sample {
                prompt_id: "p".into(),
                sample_index: i,
                response: format!("response {i}"),
                token_count: None,
                finish_reason: None,
                logprob: None,
            })
            .collect(),
    }
}

fn score(url: &str) -> Result<Vec<f64>, String> {
    let mut out = Vec::new();
    reward(url)
        .score(vec![group()], &NoProgress, &mut |g| {
            out.extend(g.samples.iter().map(|s| s.reward));
            Ok(())
        })
        .map_err(|e| e.to_string())?;
    Ok(out)
}

fn rows(indices: &[Value]) -> Value {
    let data: Vec<Value> = indices
        .iter()
        .enumerate()
        .map(|(pos, i)| {
            let mut v = json!({"label": "LABEL_0", "probs": [pos as f64 + 0.5], "num_classes": 1});
            if !i.is_null() {
                v["index"] = i.clone();
            }
            v
        })
        .collect();
    json!({"object": "list", "data": data})
}

#[test]
fn results_go_to_the_rows_their_index_names() {
    let answer = Arc::new(Mutex::new(rows(&[json!(2), json!(0), json!(1)])));
    let url = server(answer);
    // Result 0 (0.5) is row 2's, result 1 (1.5) row 0's, result 2 (2.5) row 1's.
    assert_eq!(score(&url).unwrap(), [1.5, 2.5, 0.5]);
}

#[test]
fn any_other_index_is_refused_with_the_result_and_the_value() {
    let answer = Arc::new(Mutex::new(Value::Null));
    let url = server(answer.clone());
    let cases: Vec<(Vec<Value>, &str)> = vec![
        (
            vec![json!("1"), json!("0"), json!("2")],
            "result 0 of `data` has `index` \"1\", not a row of the request (an integer in 0..3)",
        ),
        (
            vec![json!(0), json!(1.0), json!(2)],
            "result 1 of `data` has `index` 1.0, not a row of the request",
        ),
        (
            vec![json!(0), json!(1), Value::Null],
            "result 2 of `data` has no `index`",
        ),
        (
            vec![json!(0), json!(3), json!(1)],
            "result 1 of `data` has `index` 3, not a row of the request",
        ),
        (
            vec![json!(0), json!(-1), json!(1)],
            "result 1 of `data` has `index` -1",
        ),
        (
            vec![json!(1), json!(0), json!(1)],
            "results 0 and 2 of `data` both have `index` 1",
        ),
        (
            vec![json!(1), json!(0)],
            "sent 3 sequences, got 2 results: no result has `index` 2",
        ),
    ];
    for (indices, says) in cases {
        *answer.lock().unwrap() = rows(&indices);
        let err = score(&url).expect_err(&format!("{indices:?} was accepted"));
        assert!(
            err.contains(says),
            "{indices:?}: {err:?} does not say {says:?}"
        );
    }
}
