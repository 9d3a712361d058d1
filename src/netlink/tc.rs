//! Traffic control: the ingress qdisc and the u32 + mirred filter that redirects every
//! frame arriving on one link out of another. Two of them, one each way, make a tap and a
//! veth one wire (Kata's "tcfilter" networking):
//!
//! ```text
//! tc qdisc add dev A ingress
//! tc filter add dev A parent ffff: protocol all u32 match u8 0 0 \
//!     action mirred egress redirect dev B
//! ```
//!
//! Unlike a bridge, this needs no address, no MAC learning and no `br_netfilter`, and the
//! frames skip the namespace's IP stack entirely.

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionMirror, TcActionMirrorOption, TcActionOption,
    TcActionType, TcAttribute, TcFilterU32, TcFilterU32Option, TcHandle, TcMessage, TcMirror,
    TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};

use super::{Netlink, NetlinkError, Op};

/// The ingress qdisc's handle, `ffff:`; its filters hang off it.
pub const INGRESS_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};

/// `ETH_P_ALL`: a filter for every protocol.
const ETH_P_ALL: u16 = 0x0003;

fn ifindex(index: u32) -> Result<i32, NetlinkError> {
    i32::try_from(index)
        .map_err(|_| NetlinkError::InvalidArgument(format!("link index {index} is out of range")))
}

/// The `RTM_NEWQDISC` of `tc qdisc add dev INDEX ingress`.
pub(crate) fn ingress_qdisc_message(index: i32) -> TcMessage {
    let mut m = TcMessage::with_index(index);
    m.header.parent = TcHandle::INGRESS;
    m.header.handle = INGRESS_HANDLE;
    m.attributes.push(TcAttribute::Kind("ingress".into()));
    m
}

/// The `RTM_NEWTFILTER` of `tc filter add dev FROM parent ffff: protocol all u32 match u8
/// 0 0 action mirred egress redirect dev TO`.
pub(crate) fn redirect_filter_message(from: i32, to: u32) -> TcMessage {
    let mut m = TcMessage::with_index(from);
    m.header.parent = INGRESS_HANDLE;
    // tcm_info: the priority in the upper half (0: the kernel picks one), the protocol in
    // network byte order in the lower half.
    m.header.info = u32::from(ETH_P_ALL.to_be());

    // One key with a zero mask matches every frame; "terminal" ends the lookup there.
    let mut selector = TcU32Selector::default();
    selector.flags = TcU32SelectorFlags::Terminal;
    selector.nkeys = 1;
    selector.keys = vec![TcU32Key::default()];

    let mut mirror = TcMirror::default();
    mirror.generic.action = TcActionType::Stolen;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = to;
    let mut action = TcAction::default();
    action.attributes = vec![
        TcActionAttribute::Kind(TcActionMirror::KIND.into()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirror,
        ))]),
    ];

    m.attributes
        .push(TcAttribute::Kind(TcFilterU32::KIND.into()));
    m.attributes.push(TcAttribute::Options(vec![
        TcOption::U32(TcFilterU32Option::Selector(selector)),
        TcOption::U32(TcFilterU32Option::Action(vec![action])),
    ]));
    m
}

impl Netlink {
    /// `tc qdisc add dev INDEX ingress`.
    pub fn add_ingress_qdisc(&mut self, index: u32) -> Result<(), NetlinkError> {
        self.request(
            RouteNetlinkMessage::NewQueueDiscipline(ingress_qdisc_message(ifindex(index)?)),
            NLM_F_CREATE | NLM_F_EXCL,
            Op::new("add the ingress qdisc", format!("link {index}")),
        )
    }

    /// Redirects every frame arriving on link `from` out of link `to` (a u32 match-all
    /// filter on `from`'s ingress qdisc, which must exist, with a mirred egress redirect).
    pub fn add_redirect_filter(&mut self, from: u32, to: u32) -> Result<(), NetlinkError> {
        self.request(
            RouteNetlinkMessage::NewTrafficFilter(redirect_filter_message(ifindex(from)?, to)),
            NLM_F_CREATE | NLM_F_EXCL,
            Op::new(
                format!("add a filter redirecting to link {to}"),
                format!("link {from}"),
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{Emitable, Parseable};

    use super::*;

    fn round_trip(m: &TcMessage) -> TcMessage {
        let mut buf = vec![0; m.buffer_len()];
        m.emit(&mut buf);
        TcMessage::parse(&buf[..]).unwrap()
    }

    #[test]
    fn the_ingress_qdisc_is_ffff_under_the_ingress_parent() {
        let m = round_trip(&ingress_qdisc_message(4));
        assert_eq!(m.header.index, 4);
        assert_eq!(u32::from(m.header.handle), 0xffff_0000);
        assert_eq!(u32::from(m.header.parent), 0xffff_fff1);
        assert_eq!(m.attributes, [TcAttribute::Kind("ingress".into())]);
    }

    #[test]
    fn the_redirect_filter_matches_everything_and_steals_it_to_the_target() {
        let m = round_trip(&redirect_filter_message(3, 9));
        assert_eq!(m.header.index, 3);
        assert_eq!(u32::from(m.header.parent), 0xffff_0000);
        // htons(ETH_P_ALL) as the kernel reads it from tcm_info.
        assert_eq!(m.header.info >> 16, 0, "the kernel picks the priority");
        assert_eq!(
            (m.header.info as u16).to_ne_bytes(),
            [0x00, 0x03],
            "ETH_P_ALL in network byte order"
        );
        assert_eq!(m.attributes[0], TcAttribute::Kind("u32".into()));
        let TcAttribute::Options(options) = &m.attributes[1] else {
            panic!("options second: {:?}", m.attributes)
        };
        let TcOption::U32(TcFilterU32Option::Selector(sel)) = &options[0] else {
            panic!("selector first: {options:?}")
        };
        assert_eq!(sel.flags, TcU32SelectorFlags::Terminal);
        assert_eq!((sel.nkeys, sel.keys.len()), (1, 1));
        assert_eq!((sel.keys[0].mask, sel.keys[0].val), (0, 0));
        let TcOption::U32(TcFilterU32Option::Action(actions)) = &options[1] else {
            panic!("action second: {options:?}")
        };
        assert_eq!(
            actions[0].attributes[0],
            TcActionAttribute::Kind("mirred".into())
        );
        let TcActionAttribute::Options(opts) = &actions[0].attributes[1] else {
            panic!("{actions:?}")
        };
        let [TcActionOption::Mirror(TcActionMirrorOption::Parms(p))] = &opts[..] else {
            panic!("{opts:?}")
        };
        assert_eq!(p.ifindex, 9);
        assert_eq!(p.eaction, TcMirrorActionType::EgressRedir);
        assert_eq!(p.generic.action, TcActionType::Stolen);
    }
}
