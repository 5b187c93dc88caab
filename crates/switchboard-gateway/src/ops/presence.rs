//! Who is in a channel: entering, leaving, asking.

use switchboard_backplane::{BackplaneError, PresenceMember};

use crate::node::NodeInner;

/// Records a connection in a channel's presence (`present`) or removes it. A
/// failure is logged, not returned: presence entries expire on their own, and
/// the connection's subscription stands either way.
pub(crate) async fn update(node: &NodeInner, channel: &str, conn: &str, user: &str, present: bool) {
    let result = if present {
        let member = PresenceMember {
            conn: conn.to_owned(),
            user: user.to_owned(),
            node: node.config.node_id.clone(),
            info: String::new(),
        };
        node.backplane.presence_add(channel, &member).await
    } else {
        node.backplane.presence_remove(channel, conn).await
    };
    if let Err(e) = result {
        tracing::warn!(channel, conn, error = %e, "presence update failed");
    }
}

/// The connections present in a channel, cluster-wide.
pub(crate) async fn members(
    node: &NodeInner,
    channel: &str,
) -> Result<Vec<PresenceMember>, BackplaneError> {
    node.backplane.presence(channel).await
}
