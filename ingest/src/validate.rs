//! The body of `POST /v1/lancamentos`, checked field by field so every problem is reported.

use cashflow_core::{
    BusinessDate, MAX_CATEGORIA_CHARS, MAX_DESCRICAO_CHARS, Money, Tipo, check_text, reject_valor_cents,
};
use cashflow_http::FieldError;
use serde_json::Value;

const FIELDS: [&str; 5] = ["tipo", "valor", "data", "descricao", "categoria"];

/// A new entry as the merchant sends it (the merchant comes from the token).
#[derive(Clone, Debug, PartialEq, Eq, utoipa::ToSchema)]
pub struct NovoLancamento {
    pub tipo: Tipo,
    /// Greater than zero, at most 9999999999.99.
    pub valor: Money,
    /// Inside the validate operator's `date_window` around today.
    pub data: BusinessDate,
    #[schema(min_length = 1, max_length = 200)]
    pub descricao: String,
    #[schema(min_length = 1, max_length = 50)]
    pub categoria: Option<String>,
}

/// Parses a JSON body, reporting every invalid field at once.
pub fn parse_novo(body: &Value) -> Result<NovoLancamento, Vec<FieldError>> {
    let Some(obj) = body.as_object() else {
        return Err(vec![FieldError::new("", "the body must be a JSON object")]);
    };
    let mut errors = Vec::new();
    for key in obj.keys().filter(|k| !FIELDS.contains(&k.as_str())) {
        let why = if key == "merchant_id" { "the merchant comes from the token" } else { "is not a known field" };
        errors.push(FieldError::new(key.as_str(), why));
    }
    let text = |name: &str, errors: &mut Vec<FieldError>| -> Option<String> {
        match obj.get(name) {
            None | Some(Value::Null) => {
                errors.push(FieldError::new(name, "is required"));
                None
            }
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                errors.push(FieldError::new(name, "must be a string"));
                None
            }
        }
    };
    let tipo = text("tipo", &mut errors)
        .and_then(|s| s.parse::<Tipo>().map_err(|e| errors.push(FieldError::new("tipo", e))).ok());
    let valor = text("valor", &mut errors).and_then(|s| match s.parse::<Money>() {
        Ok(v) => match reject_valor_cents(v.cents()) {
            None => Some(v),
            Some(why) => {
                errors.push(FieldError::new("valor", why));
                None
            }
        },
        Err(e) => {
            errors.push(FieldError::new("valor", e.to_string()));
            None
        }
    });
    let data = text("data", &mut errors)
        .and_then(|s| s.parse::<BusinessDate>().map_err(|e| errors.push(FieldError::new("data", e))).ok());
    let descricao = text("descricao", &mut errors).filter(|s| {
        check_text("descricao", s, MAX_DESCRICAO_CHARS, true)
            .map_err(|e| errors.push(FieldError::new("descricao", e)))
            .is_ok()
    });
    let categoria = match obj.get("categoria") {
        None | Some(Value::Null) => Some(None),
        Some(Value::String(s)) => check_text("categoria", s, MAX_CATEGORIA_CHARS, true)
            .map(|()| Some(s.clone()))
            .map_err(|e| errors.push(FieldError::new("categoria", e)))
            .ok(),
        Some(_) => {
            errors.push(FieldError::new("categoria", "must be a string"));
            None
        }
    };
    match (tipo, valor, data, descricao, categoria) {
        (Some(tipo), Some(valor), Some(data), Some(descricao), Some(categoria)) if errors.is_empty() => {
            Ok(NovoLancamento { tipo, valor, data, descricao, categoria })
        }
        _ => Err(errors),
    }
}

/// The optional body of `POST /v1/lancamentos/{id}/estorno`: when and why. Type, amount and
/// category come from the entry reversed.
#[derive(Clone, Debug, Default, PartialEq, Eq, utoipa::ToSchema)]
pub struct NovoEstorno {
    /// Default: today.
    pub data: Option<BusinessDate>,
    /// Default: "estorno de <id>".
    #[schema(min_length = 1, max_length = 200)]
    pub descricao: Option<String>,
}

/// Parses the reversal body (`{}` or absent is fine), reporting every invalid field at once.
pub fn parse_estorno(body: &Value) -> Result<NovoEstorno, Vec<FieldError>> {
    let Some(obj) = body.as_object() else {
        return Err(vec![FieldError::new("", "the body must be a JSON object")]);
    };
    let mut errors = Vec::new();
    for key in obj.keys().filter(|k| !["data", "descricao"].contains(&k.as_str())) {
        let why = match key.as_str() {
            "tipo" | "valor" | "categoria" => "comes from the entry reversed",
            _ => "is not a known field",
        };
        errors.push(FieldError::new(key.as_str(), why));
    }
    let mut out = NovoEstorno::default();
    match obj.get("data") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => match s.parse() {
            Ok(d) => out.data = Some(d),
            Err(e) => errors.push(FieldError::new("data", e)),
        },
        Some(_) => errors.push(FieldError::new("data", "must be a string")),
    }
    match obj.get("descricao") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => match check_text("descricao", s, MAX_DESCRICAO_CHARS, true) {
            Ok(()) => out.descricao = Some(s.clone()),
            Err(e) => errors.push(FieldError::new("descricao", e)),
        },
        Some(_) => errors.push(FieldError::new("descricao", "must be a string")),
    }
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Vec<String> {
        parse_novo(&v).unwrap_err().into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn accepts_a_valid_entry() {
        let n =
            parse_novo(&json!({"tipo":"credito","valor":"150.25","data":"2026-01-15","descricao":"venda"})).unwrap();
        assert_eq!(n.valor.cents(), 15025);
        assert_eq!(n.categoria, None);
    }

    #[test]
    fn a_reversal_body_is_optional_and_cannot_restate_the_amount() {
        assert_eq!(parse_estorno(&json!({})), Ok(NovoEstorno::default()));
        let e = parse_estorno(&json!({"data":"2026-01-02","descricao":"devolução"})).unwrap();
        assert_eq!(e.data.map(|d| d.to_string()).as_deref(), Some("2026-01-02"));
        let bad = parse_estorno(&json!({"valor":"1.00","data":"ontem","descricao":""})).unwrap_err();
        assert_eq!(bad.into_iter().map(|e| e.field).collect::<Vec<_>>(), ["valor", "data", "descricao"]);
    }

    #[test]
    fn reports_every_bad_field() {
        assert_eq!(fields(json!({})), ["tipo", "valor", "data", "descricao"]);
        assert_eq!(
            fields(
                json!({"tipo":"pix","valor":150.25,"data":"2026-13-01","descricao":"","categoria":7,"merchant_id":"x"})
            ),
            ["merchant_id", "tipo", "valor", "data", "descricao", "categoria"]
        );
        for bad in ["0", "0.00", "-1.00", "1.234", "abc", "10000000000.00"] {
            assert_eq!(
                fields(json!({"tipo":"debito","valor":bad,"data":"2026-01-01","descricao":"x"})),
                ["valor"],
                "{bad}"
            );
        }
    }
}
