//! What the `openai` sampler sends, read from a loopback server: only the sampling settings the
//! recipe sets (with `max_tokens` always), their ranges checked; and a server that takes only
//! text prompts (as llama-cpp-python's answers token ids: 422 on `body.prompt`) gets the prompt
//! rendered by the same chat template as text (`prompt_format = "auto"`), or a message saying
//! how to configure it (`"tokens"`).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use serde_json::{Value, json};
use sweetspot_core::{
    BuildContext, NoProgress, Prompt, PromptContent, SampleRequest, SamplerConfig,
};
use sweetspot_http::OpenAiSamplerConfig;

/// A `/v1/completions` that records every body; with `text_only`, token-id prompts are refused
/// with that status: 500 and the message as llama-cpp-python 0.3 answers, or 422 and FastAPI's
/// own shape.
fn server(seen: Arc<Mutex<Vec<Value>>>, text_only: Option<StatusCode>) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let app = axum::Router::new().route(
                "/v1/completions",
                axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
                    seen.lock().unwrap().push(body.clone());
                    async move {
                        if let (Some(status), false) = (text_only, body["prompt"].is_string()) {
                            let detail = if status == StatusCode::INTERNAL_SERVER_ERROR {
                                json!({"error": {"message": "2 validation errors:\n  \
                                    {'type': 'string_type', 'loc': ('body', 'prompt', 'str'), \
                                    'msg': 'Input should be a valid string', 'input': [1, 2]}",
                                    "type": "internal_server_error"}})
                            } else {
                                json!({"detail": [{"type": "string_type",
                                    "loc": ["body", "prompt", "str"],
                                    "msg": "Input should be a valid string"}]})
                            };
                            return (status, axum::Json(detail));
                        }
                        let n = body["n"].as_u64().unwrap_or(1);
                        let choices: Vec<Value> = (0..n)
                            .map(|i| {
                                json!({"index": i, "text": format!("answer {i}"),
                                "finish_reason": "length"})
                            })
                            .collect();
                        (
                            StatusCode::OK,
                            axum::Json(json!({"choices": choices,
                                "usage": {"completion_tokens": 3}})),
                        )
                    }
                }),
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    format!("http://{}", rx.recv().unwrap())
}

fn policy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/policy")
}

fn config(url: &str, extra: &str) -> OpenAiSamplerConfig {
    let retries = if extra.contains("max_retries") {
        ""
    } else {
        "max_retries = 0\n"
    };
    toml::from_str(&format!(
        "endpoints = [{url:?}]\nmodel = \"m\"\ntokenizer = {:?}\nmax_new_tokens = 5\n\
         {retries}timeout_s = 20\n{extra}",
        policy()
    ))
    .unwrap()
}

fn prompts() -> Vec<Prompt> {
    vec![
        Prompt {
            id: "a".into(),
            content: PromptContent::Text("a cat".into()),
        },
        Prompt {
            id: "b".into(),
            content: PromptContent::Text("the dog".into()),
        },
    ]
}

fn sample(config: &OpenAiSamplerConfig) -> Result<usize, String> {
    let mut sampler = config
        .build(&BuildContext::new("."))
        .map_err(|e| e.to_string())?;
    let mut count = 0;
    sampler
        .sample(
            &prompts(),
            &SampleRequest {
                n: 2,
                seed: 1,
                first_index: 0,
            },
            &NoProgress,
            &mut |g| {
                count += g.samples.len();
                Ok(())
            },
        )
        .map_err(|e| e.to_string())?;
    Ok(count)
}

const SETTINGS: [&str; 5] = [
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
];

#[test]
fn only_the_settings_the_recipe_sets_are_sent() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let url = server(seen.clone(), None);
    assert_eq!(sample(&config(&url, "")).unwrap(), 4);
    for body in seen.lock().unwrap().drain(..) {
        for key in SETTINGS {
            assert!(body.get(key).is_none(), "{key} sent unasked: {body}");
        }
        assert_eq!(body["max_tokens"], 5, "{body}");
        assert!(body["prompt"].is_array(), "{body}");
    }
    let set = "temperature = 0.7\ntop_p = 0.9\ntop_k = 20\nmin_p = 0.05\nrepetition_penalty = 1.1";
    assert_eq!(sample(&config(&url, set)).unwrap(), 4);
    for body in seen.lock().unwrap().drain(..) {
        for (key, want) in SETTINGS.iter().zip([0.7, 0.9, 20.0, 0.05, 1.1]) {
            let got = body[key]
                .as_f64()
                .unwrap_or_else(|| panic!("{key} missing: {body}"));
            assert!((got - want).abs() < 1e-6, "{key}: {got}");
        }
    }
    // top_k = -1 only when asked.
    assert_eq!(sample(&config(&url, "top_k = -1")).unwrap(), 4);
    assert!(seen.lock().unwrap().iter().all(|b| b["top_k"] == -1));
}

#[test]
fn settings_out_of_range_are_refused_by_name() {
    let url = "http://127.0.0.1:9";
    for (extra, says) in [
        ("min_p = 1.5", "min_p"),
        ("min_p = -0.1", "min_p"),
        ("repetition_penalty = 0", "repetition_penalty"),
        ("repetition_penalty = -1.0", "repetition_penalty"),
        ("top_k = -2", "top_k"),
        ("temperature = -1.0", "temperature"),
        ("top_p = 0", "top_p"),
    ] {
        let issue = config(url, extra)
            .check(&BuildContext::new("."))
            .expect_err(extra);
        assert!(issue.to_string().contains(says), "{extra}: {issue}");
    }
}

#[test]
fn a_server_that_takes_only_text_gets_the_rendered_prompt() {
    for status in [
        StatusCode::UNPROCESSABLE_ENTITY,
        StatusCode::INTERNAL_SERVER_ERROR,
    ] {
        text_only(status);
    }
}

fn text_only(status: StatusCode) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let url = server(seen.clone(), Some(status));
    // auto: the first try with token ids is refused (not retried), then text, rendered by the
    // chat template.
    assert_eq!(sample(&config(&url, "max_retries = 3")).unwrap(), 4);
    let bodies = std::mem::take(&mut *seen.lock().unwrap());
    assert!(bodies[0]["prompt"].is_array(), "{}", bodies[0]);
    let mut texts: Vec<&str> = bodies[1..]
        .iter()
        .map(|b| b["prompt"].as_str().unwrap())
        .collect();
    texts.sort_unstable();
    let tokenizer = sweetspot_model::load_tokenizer(&policy()).unwrap();
    let mut rendered: Vec<String> = prompts()
        .iter()
        .map(|p| {
            tokenizer
                .render_chat(&p.content.to_messages(), true)
                .unwrap()
        })
        .collect();
    rendered.sort_unstable();
    // The refused first try is sent again as text, with the other prompt's request.
    assert_eq!(texts, rendered, "{bodies:?}");
    for prompt in prompts() {
        let text = tokenizer
            .render_chat(&prompt.content.to_messages(), true)
            .unwrap();
        // The text encodes to the token ids the native sampler feeds.
        assert_eq!(
            tokenizer.encode(&text, false).unwrap(),
            tokenizer.encode_prompt(&prompt).unwrap()
        );
    }
    // text: no first try.
    assert_eq!(
        sample(&config(&url, "prompt_format = \"text\"")).unwrap(),
        4
    );
    assert!(
        seen.lock()
            .unwrap()
            .drain(..)
            .all(|b| b["prompt"].is_string())
    );
    // tokens: the failure says what to set.
    let err = sample(&config(&url, "prompt_format = \"tokens\"")).unwrap_err();
    assert!(
        err.contains(&status.as_u16().to_string()) && err.contains("prompt_format = \"text\""),
        "{err}"
    );
}
