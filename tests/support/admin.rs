//! The Kafka admin API's `DescribeGroups`, as `kafka-consumer-groups --describe` and lag
//! exporters call it: a group's state, its members and the partitions assigned to each. Sent to
//! one broker, which must be the group's coordinator (any broker is, on a Tansu cluster).

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use kafka_protocol::messages::{
    ApiKey, ConsumerProtocolAssignment, DescribeGroupsRequest, DescribeGroupsResponse, GroupId, RequestHeader,
    ResponseHeader,
};
use kafka_protocol::protocol::{Decodable as _, Encodable as _, HeaderVersion as _, StrBytes};

/// The version of `DescribeGroups` asked for (v3: what librdkafka 2.x sends).
const VERSION: i16 = 3;

/// A consumer group as the coordinator describes it.
#[derive(Debug)]
pub struct Group {
    pub state: String,
    pub members: Vec<Member>,
}

#[derive(Debug)]
pub struct Member {
    pub member_id: String,
    pub client_id: String,
    /// (topic, partition), in order.
    pub partitions: Vec<(String, i32)>,
}

impl Group {
    /// How many partitions each member owns, fewest first.
    pub fn counts(&self) -> Vec<usize> {
        let mut counts: Vec<usize> = self.members.iter().map(|m| m.partitions.len()).collect();
        counts.sort_unstable();
        counts
    }
}

/// `DescribeGroups` for `group` on the first of `brokers` (host:port, comma-separated) that accepts
/// a connection; an error for a transport failure, a broker that closes the connection, or an
/// error code in the answer.
pub fn describe_group(brokers: &str, group: &str) -> Result<Group, String> {
    let mut header = RequestHeader::default();
    header.request_api_key = ApiKey::DescribeGroups as i16;
    header.request_api_version = VERSION;
    header.correlation_id = 1;
    header.client_id = Some(StrBytes::from_static_str("cashflow-tests"));
    let mut request = DescribeGroupsRequest::default();
    request.groups = vec![GroupId(StrBytes::from_string(group.to_owned()))];
    let mut body = bytes::BytesMut::new();
    header.encode(&mut body, DescribeGroupsRequest::header_version(VERSION)).map_err(|e| e.to_string())?;
    request.encode(&mut body, VERSION).map_err(|e| e.to_string())?;

    // Like a client given every broker of a cluster: the first that accepts a connection answers.
    let mut refused = Vec::new();
    let mut connected = None;
    for broker in brokers.split(',') {
        match TcpStream::connect(broker) {
            Ok(stream) => {
                connected = Some(stream);
                break;
            }
            Err(e) => refused.push(format!("connect {broker}: {e}")),
        }
    }
    let mut stream = connected.ok_or_else(|| refused.join("; "))?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let size = i32::try_from(body.len()).map_err(|e| e.to_string())?;
    stream.write_all(&size.to_be_bytes()).and_then(|()| stream.write_all(&body)).map_err(|e| e.to_string())?;
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).map_err(|e| format!("the broker closed the connection: {e}"))?;
    let mut answer = vec![0u8; usize::try_from(i32::from_be_bytes(size)).map_err(|e| e.to_string())?];
    stream.read_exact(&mut answer).map_err(|e| e.to_string())?;

    let mut answer = bytes::Bytes::from(answer);
    ResponseHeader::decode(&mut answer, DescribeGroupsResponse::header_version(VERSION)).map_err(|e| e.to_string())?;
    let response = DescribeGroupsResponse::decode(&mut answer, VERSION).map_err(|e| e.to_string())?;
    let described = response.groups.into_iter().next().ok_or("no group in the answer")?;
    if described.error_code != 0 {
        return Err(format!("error code {} for group {group}", described.error_code));
    }
    let members = described
        .members
        .into_iter()
        .map(|m| {
            let mut assignment = m.member_assignment;
            let partitions = if assignment.is_empty() {
                vec![]
            } else {
                let version = bytes::Buf::try_get_i16(&mut assignment).map_err(|e| e.to_string())?;
                let decoded =
                    ConsumerProtocolAssignment::decode(&mut assignment, version).map_err(|e| e.to_string())?;
                let mut partitions: Vec<(String, i32)> = decoded
                    .assigned_partitions
                    .into_iter()
                    .flat_map(|t| t.partitions.into_iter().map(move |p| (t.topic.0.to_string(), p)))
                    .collect();
                partitions.sort();
                partitions
            };
            Ok(Member { member_id: m.member_id.to_string(), client_id: m.client_id.to_string(), partitions })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Group { state: described.group_state.to_string(), members })
}
