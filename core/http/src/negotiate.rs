//! What a request says about representations is honoured or refused, never ignored: `Accept` is
//! negotiated as RFC 9110 says (quality values, the most specific range that matches, media types
//! in any case), and a body in a content coding is refused, since none is decoded here.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use mediatype::names::{_STAR, Q};
use mediatype::{MediaType, MediaTypeList, Name, ReadParams as _, Value};

use crate::Problem;

/// The one of `offered` the request's `Accept` prefers (RFC 9110 12.5.1): each is given the
/// quality of the most specific range that matches it; the highest quality above 0 wins, then the
/// one named most specifically (`text/csv, */*` is CSV), then the first offered. With no `Accept`,
/// the first. Types, subtypes, parameter names and values match in any case, quoted or not. An
/// element that does not parse (`*`, `q=2`) is disregarded, as the RFC allows; 406 when none of
/// `offered` is acceptable.
pub fn negotiate<'a>(
    headers: &HeaderMap,
    offered: &'a [MediaType<'static>],
) -> Result<&'a MediaType<'static>, Problem> {
    let values = headers.get_all(header::ACCEPT).into_iter().filter_map(|v| v.to_str().ok());
    let ranges: Vec<(MediaType, f32)> =
        values.flat_map(MediaTypeList::new).filter_map(Result::ok).filter_map(quality).collect();
    let first = || offered.first().expect("a resource is offered in at least one media type");
    if ranges.is_empty() {
        return Ok(first());
    }
    // Each offer's quality and how specifically it was named, from its most specific range.
    let judged = |offer: &MediaType| {
        let matching = ranges.iter().rev().filter(|(range, _)| matches(range, offer));
        matching.max_by_key(|(range, _)| specificity(range)).map(|(range, q)| (*q, specificity(range)))
    };
    let mut best: Option<(&MediaType<'static>, f32, (bool, bool, usize))> = None;
    for offer in offered {
        let Some((q, named)) = judged(offer).filter(|(q, _)| *q > 0.0) else { continue };
        if best.is_none_or(|(_, best_q, best_named)| q > best_q || (q == best_q && named > best_named)) {
            best = Some((offer, q, named));
        }
    }
    best.map(|(offer, ..)| offer).ok_or_else(|| {
        let names: Vec<String> = offered.iter().map(ToString::to_string).collect();
        Problem::new(StatusCode::NOT_ACCEPTABLE, "not-acceptable", "Not acceptable")
            .detail(format!("this resource is available as {} only", names.join(" or ")))
    })
}

/// A range and its quality (1 without `q`); none when its `q` is not a quality (0 to 1).
fn quality(range: MediaType<'_>) -> Option<(MediaType<'_>, f32)> {
    let q = match range.get_param(Q) {
        None => 1.0,
        Some(q) => q.unquoted_str().parse::<f32>().ok().filter(|q| (0.0..=1.0).contains(q))?,
    };
    Some((range, q))
}

/// `range` (`*/*`, `text/*`, `text/csv;charset=utf-8`) covers `offer`: its type and subtype, and
/// each of its parameters that the offer has (`application/json;charset=utf-8` is JSON).
fn matches(range: &MediaType, offer: &MediaType) -> bool {
    let kind = range.ty == _STAR || (range.ty == offer.ty && (range.subty == _STAR || range.subty == offer.subty));
    kind && parameters(range).all(|(name, value)| {
        offer.get_param(*name).is_none_or(|offered| offered.unquoted_str().eq_ignore_ascii_case(&value.unquoted_str()))
    })
}

/// Of two ranges that cover an offer, the more specific decides its quality.
fn specificity(range: &MediaType) -> (bool, bool, usize) {
    (range.ty != _STAR, range.subty != _STAR, parameters(range).count())
}

fn parameters<'r>(range: &'r MediaType) -> impl Iterator<Item = &'r (Name<'r>, Value<'r>)> {
    range.params.iter().filter(|(name, _)| *name != Q)
}

/// 415, with `Accept-Encoding: identity`, for a request whose body is in a content coding
/// (`Content-Encoding` other than `identity`): read as plain, a compressed body would be
/// misread; decoded, it would be a decompression bomb's way in.
pub(crate) fn refuse_content_coding(headers: &HeaderMap) -> Option<Response> {
    let codings = headers.get_all(header::CONTENT_ENCODING).iter().flat_map(|v| v.as_bytes().split(|b| *b == b','));
    let mut coded = codings.map(<[u8]>::trim_ascii).filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case(b"identity"));
    coded.next()?;
    let mut answer =
        Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type", "Unsupported media type")
            .detail("a body in a content coding is not accepted: send it as it is (Content-Encoding: identity)")
            .into_response();
    answer.headers_mut().insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    Some(answer)
}
