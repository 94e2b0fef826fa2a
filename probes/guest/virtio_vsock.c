/*
 * virtio-vsock (spec 5.10) over PCI or virtio-mmio (`mmio`), with the transports of
 * virtio.c: stream connections to and from the host (CID 2), one at a time.
 *
 * - `vsock`: connects to host port `vsock-port=P` (default 1234), sends
 *   "ping from guest\n", reads the echo back, then shuts the connection down
 *   (SHUTDOWN with both flags, and waits for the peer's RST).
 * - `vsock-listen=Q`: waits (at most `vsock-wait=S` seconds, default 10) for a REQUEST
 *   to guest port Q, accepts it, echoes every byte back until the host shuts down its
 *   sending side (or `vsock-bytes=N` bytes were echoed), then shuts down likewise.
 *
 * Credit (5.10.6.3): each connection has a receive store of VS_BUF_ALLOC bytes, which we
 * advertise as buf_alloc; fwd_cnt counts the bytes taken out of it (read by the
 * connect test, or sent back by the echo). A CREDIT_UPDATE goes out whenever bytes were
 * consumed that no packet has advertised yet, and in answer to a CREDIT_REQUEST. We
 * send no more than the peer's credit (buf_alloc - (tx_cnt - fwd_cnt)) and ask for
 * credit (CREDIT_REQUEST) when it is exhausted.
 *
 * QEMU has no user-space vsock device (only vhost-vsock and vhost-user-vsock), so every
 * field of every packet the device sends is checked here: used length against the
 * header's len, CIDs, type, op, flags, ports, the peer's fwd_cnt against what we sent,
 * and the peer's data against our credit. See README.md for the report lines.
 */
#include "virtio.h"

#define VS_OP_REQUEST 1
#define VS_OP_RESPONSE 2
#define VS_OP_RST 3
#define VS_OP_SHUTDOWN 4
#define VS_OP_RW 5
#define VS_OP_CREDIT_UPDATE 6
#define VS_OP_CREDIT_REQUEST 7
#define VS_TYPE_STREAM 1
#define VS_SHUT_RCV 1
#define VS_SHUT_SEND 2
#define VS_HOST_CID 2
#define VS_EVENT_TRANSPORT_RESET 0

#define VS_NRX 8
#define VS_RXBUF 2048		/* header + up to 2004 payload bytes */
#define VS_NTX 8
#define VS_TXPAY 1024		/* most payload bytes of one packet we send */
#define VS_NEV 4
#define VS_BUF_ALLOC 2048	/* receive store per connection: our buf_alloc */
#define VS_LOCAL_PORT 49152	/* our port for connections we open */
#define VS_GOT_MAX 64

struct vs_hdr {
	u64 src_cid, dst_cid;
	u32 src_port, dst_port, len;
	u16 type, op;
	u32 flags, buf_alloc, fwd_cnt;
} __attribute__((packed));

#define VS_HDR ((u32)sizeof(struct vs_hdr))
_Static_assert(sizeof(struct vs_hdr) == 44, "virtio_vsock_hdr is 44 bytes");

static struct vring_page vs_rings[3] NOINIT;
static u8 vs_rx[VS_NRX][VS_RXBUF] NOINIT __attribute__((aligned(64)));
static u8 vs_tx[VS_NTX][VS_HDR + VS_TXPAY] NOINIT __attribute__((aligned(64)));
static u8 vs_ev[VS_NEV][8] NOINIT __attribute__((aligned(8)));
static u8 vs_tmp[VS_TXPAY] NOINIT;

enum { C_NONE, C_CONNECTING, C_OPEN, C_CLOSING, C_CLOSED };

struct vs_conn {
	int state;
	u32 local, peer;
	/* their side */
	u32 peer_buf_alloc, peer_fwd_cnt;
	u32 peer_shut;		/* SHUTDOWN flags the peer sent */
	int rst;		/* the peer reset the connection */
	int credit_asked;	/* our CREDIT_REQUEST is unanswered */
	int update_owed;	/* the peer asked for our credit */
	/* our side */
	u32 tx_cnt;		/* payload bytes we sent */
	u32 rx_cnt;		/* payload bytes we received */
	u32 fwd_cnt;		/* payload bytes taken out of the store */
	u32 adv_fwd;		/* the fwd_cnt in our last header */
	u32 shut_sent;		/* SHUTDOWN flags we sent */
	/* the receive store: a ring of VS_BUF_ALLOC bytes */
	u8 store[VS_BUF_ALLOC];
	u32 head, len;
};

static struct {
	struct vdev dev;
	struct vq rxq, txq, evq;
	u64 cid;
	u16 nrx, ntx, nev;
	u8 tx_busy[VS_NTX];
	u32 irqs_seen;
	u32 listen_port;
	int listening;
	/* counters for vsock-stats */
	u32 rx_pkts, tx_pkts, updates_sent, updates_got, requests_sent, requests_got, rst_sent, stray, late, events;
	int tx_dead;	/* the device stopped taking packets: send nothing more */
	u64 kick_tick;	/* `ticks` at the last transmit notification */
	u32 rekicks;	/* notifications repeated for packets the device left waiting */
} vs;

static struct vs_conn conn NOINIT;	/* conn_reset_state() clears all but the store */

static void put_escaped(const u8 *p, u32 n)
{
	static const char hex[] = "0123456789abcdef";
	for (u32 i = 0; i < n; i++) {
		u8 c = p[i];
		if (c >= 0x20 && c < 0x7f && c != '\\') {
			putc(c);
		} else {
			puts("\\x");
			putc(hex[c >> 4]);
			putc(hex[c & 15]);
		}
	}
}

static void vs_fail(const char *why) { vdev_fail(&vs.dev, why); }

/* ---- time ---- */

struct deadline {
	u64 t0, tick0;
	u32 ms;
};

static void deadline_start(struct deadline *d, u32 ms)
{
	d->t0 = rdtsc();
	d->tick0 = ticks;
	d->ms = ms;
}

/* The 10 ms LAPIC timer bounds the wait; the TSC (at the assumed rate) too, in case the
 * timer does not tick. */
static int deadline_passed(const struct deadline *d)
{
	return ticks - d->tick0 > d->ms / 10 || rdtsc() - d->t0 > (u64)d->ms * TSC_PER_MS;
}

static void vs_idle(void)
{
	if (vs.dev.irq == IRQ_POLL) {
		/* Spin a little for a quick answer, then sleep until the next timer tick. */
		for (u32 i = 0; i < 500; i++) {
			if (vs.rxq.used->idx != vs.rxq.last_used || vs.txq.used->idx != vs.txq.last_used)
				return;
			cpu_relax();
		}
	}
	wait_irq();
}

/* ---- sending ---- */

static void tx_reclaim(void)
{
	u32 len;
	int id;
	while ((id = vq_pop(&vs.txq, &len)) >= 0) {
		if ((u32)id >= vs.ntx || !vs.tx_busy[id]) {
			vs_fail("bad used element on the tx queue");
			continue;
		}
		vs.tx_busy[id] = 0;
	}
}

/* A free transmit slot, waiting (at most about 2 s) for one; -1 if none came. */
static int tx_slot(void)
{
	struct deadline d;
	deadline_start(&d, 2000);
	for (;;) {
		tx_reclaim();
		for (u16 i = 0; i < vs.ntx; i++)
			if (!vs.tx_busy[i])
				return i;
		if (deadline_passed(&d)) {
			vs_fail("tx queue stuck");
			vs.tx_dead = 1;
			return -1;
		}
		vs_idle();
	}
}

static int send_hdr(const struct vs_hdr *h, const u8 *payload)
{
	if (vs.tx_dead)
		return -1;
	int slot = tx_slot();
	if (slot < 0)
		return -1;
	memcpy(vs_tx[slot], h, VS_HDR);
	if (h->len)
		memcpy(vs_tx[slot] + VS_HDR, payload, h->len);
	vs.txq.desc[slot].addr = (u64)vs_tx[slot];
	vs.txq.desc[slot].len = VS_HDR + h->len;
	vs.txq.desc[slot].flags = 0;
	vs.txq.desc[slot].next = 0;
	vs.tx_busy[slot] = 1;
	vq_publish(&vs.txq, (u16)slot);
	vq_kick(&vs.dev, &vs.txq);
	vs.kick_tick = ticks;
	vs.tx_pkts++;
	return 0;
}

/* A packet on connection c; payload only for RW. Carries our credit. */
static int conn_send(struct vs_conn *c, u16 op, u32 flags, const u8 *payload, u32 len)
{
	struct vs_hdr h;
	h.src_cid = vs.cid;
	h.dst_cid = VS_HOST_CID;
	h.src_port = c->local;
	h.dst_port = c->peer;
	h.len = len;
	h.type = VS_TYPE_STREAM;
	h.op = op;
	h.flags = flags;
	h.buf_alloc = VS_BUF_ALLOC;
	h.fwd_cnt = c->fwd_cnt;
	if (send_hdr(&h, payload) < 0)
		return -1;
	c->adv_fwd = c->fwd_cnt;
	if (op == VS_OP_RW)
		c->tx_cnt += len;
	if (op == VS_OP_CREDIT_UPDATE)
		vs.updates_sent++;
	if (op == VS_OP_CREDIT_REQUEST)
		vs.requests_sent++;
	if (op == VS_OP_RST)
		vs.rst_sent++;
	if (op == VS_OP_SHUTDOWN)
		c->shut_sent |= flags;
	return 0;
}

/* The RST that answers a packet for no connection of ours (never an RST itself). */
static void reply_rst(const struct vs_hdr *in)
{
	if (in->op == VS_OP_RST)
		return;
	struct vs_hdr h;
	memset(&h, 0, sizeof(h));
	h.src_cid = vs.cid;
	h.dst_cid = in->src_cid;
	h.src_port = in->dst_port;
	h.dst_port = in->src_port;
	h.type = in->type;
	h.op = VS_OP_RST;
	if (send_hdr(&h, NULL) == 0)
		vs.rst_sent++;
}

/* Bytes we may still send: the peer's buf_alloc less what it has not consumed yet. */
static u32 peer_credit(const struct vs_conn *c)
{
	u32 in_flight = c->tx_cnt - c->peer_fwd_cnt;
	return in_flight >= c->peer_buf_alloc ? 0 : c->peer_buf_alloc - in_flight;
}

/* ---- receiving ---- */

static void conn_reset_state(struct vs_conn *c)
{
	c->state = C_NONE;
	c->local = c->peer = 0;
	c->peer_buf_alloc = c->peer_fwd_cnt = c->peer_shut = 0;
	c->rst = c->credit_asked = c->update_owed = 0;
	c->tx_cnt = c->rx_cnt = c->fwd_cnt = c->adv_fwd = c->shut_sent = 0;
	c->head = c->len = 0;
}

/* Takes a packet of connection c (ports already matched). */
static void conn_packet(struct vs_conn *c, const struct vs_hdr *h, const u8 *payload)
{
	if (h->op == VS_OP_RST) {
		c->rst = 1;
		c->state = C_CLOSED;
		return;
	}
	/* Every other packet carries the peer's credit. Its fwd_cnt may only grow, and
	 * never past what we sent. */
	u32 grown = h->fwd_cnt - c->peer_fwd_cnt, unacked = c->tx_cnt - c->peer_fwd_cnt;
	if (grown > unacked) {
		vs_fail("peer fwd_cnt goes backwards or past the bytes we sent");
	} else {
		c->peer_fwd_cnt = h->fwd_cnt;
	}
	c->peer_buf_alloc = h->buf_alloc;
	if (peer_credit(c) > 0)
		c->credit_asked = 0;
	switch (h->op) {
	case VS_OP_REQUEST:
		vs_fail("REQUEST on an open connection");
		conn_send(c, VS_OP_RST, 0, NULL, 0);
		c->state = C_CLOSED;
		break;
	case VS_OP_RESPONSE:
		if (c->state != C_CONNECTING) {
			vs_fail("unexpected RESPONSE");
			conn_send(c, VS_OP_RST, 0, NULL, 0);
			c->state = C_CLOSED;
		} else {
			c->state = C_OPEN;
		}
		break;
	case VS_OP_SHUTDOWN:
		if (c->state != C_OPEN && c->state != C_CLOSING)
			vs_fail("SHUTDOWN before the connection was open");
		c->peer_shut |= h->flags;
		break;
	case VS_OP_RW:
		if (c->state != C_OPEN && c->state != C_CLOSING) {
			vs_fail("RW before the connection was open");
			break;
		}
		if (c->peer_shut & VS_SHUT_SEND) {
			vs_fail("RW after the peer's SHUTDOWN(SEND)");
			break;
		}
		if (c->shut_sent & VS_SHUT_RCV) {
			/* Sent before the device saw our SHUTDOWN: dropped (and so consumed). */
			vs.late++;
			c->rx_cnt += h->len;
			c->fwd_cnt += h->len;
			break;
		}
		if (c->len + h->len > VS_BUF_ALLOC) {
			vs_fail("the peer sent more than our credit");
			conn_send(c, VS_OP_RST, 0, NULL, 0);
			c->state = C_CLOSED;
			break;
		}
		for (u32 i = 0; i < h->len; i++)
			c->store[(c->head + c->len + i) % VS_BUF_ALLOC] = payload[i];
		c->len += h->len;
		c->rx_cnt += h->len;
		break;
	case VS_OP_CREDIT_UPDATE:
		vs.updates_got++;
		break;
	case VS_OP_CREDIT_REQUEST:
		vs.requests_got++;
		c->update_owed = 1;
		break;
	}
}

static void put_hdr(const struct vs_hdr *h, u32 used);

/* A packet that fails a check: printed whole, then the failure. The buffer is read
 * again about 10 ms later, and printed again if it changed: a device that makes a
 * buffer used before it has written it shows up that way. */
static void bad_packet(const struct vs_hdr *h, u32 used, const u8 *buf, const char *why)
{
	puts("vsock-bad-packet: ");
	put_hdr(h, used);
	u64 t0 = rdtsc();
	while (rdtsc() - t0 < 10 * TSC_PER_MS)
		cpu_relax();
	struct vs_hdr again;
	memcpy(&again, buf, VS_HDR);
	if (used >= VS_HDR && memcmp(&again, h, VS_HDR)) {
		puts("vsock-bad-packet-later: ");
		put_hdr(&again, used);
	}
	vs_fail(why);
}

static void put_hdr(const struct vs_hdr *h, u32 used)
{
	puts("used=");
	put_dec(used);
	if (used >= VS_HDR) {
		puts(" src_cid=");
		put_dec(h->src_cid);
		puts(" dst_cid=");
		put_dec(h->dst_cid);
		puts(" src_port=");
		put_dec(h->src_port);
		puts(" dst_port=");
		put_dec(h->dst_port);
		puts(" len=");
		put_dec(h->len);
		puts(" type=");
		put_dec(h->type);
		puts(" op=");
		put_dec(h->op);
		puts(" flags=");
		put_hex(h->flags);
		puts(" buf_alloc=");
		put_dec(h->buf_alloc);
		puts(" fwd_cnt=");
		put_dec(h->fwd_cnt);
	}
	puts("\n");
}

/* Checks one received packet and hands it to the connection (or the listener). */
static void rx_packet(const u8 *buf, u32 used)
{
	struct vs_hdr h;
	vs.rx_pkts++;
	if (used < VS_HDR) {
		bad_packet(&h, used, buf, "rx packet shorter than a header");
		return;
	}
	memcpy(&h, buf, VS_HDR);
	const u8 *payload = buf + VS_HDR;
	u64 any = 0;
	for (u32 i = 0; i + 8 <= VS_HDR; i += 8)
		any |= *(const u64a *)(buf + i);
	any |= *(const u32 *)(buf + VS_HDR - 4);
	if (!any) {
		bad_packet(&h, used, buf, "rx buffer returned unwritten (all-zero header)");
		return;
	}
	if (h.len != used - VS_HDR) {
		bad_packet(&h, used, buf, "rx used length is not header + len");
		return;
	}
	if (h.src_cid != VS_HOST_CID) {
		bad_packet(&h, used, buf, "rx src_cid is not the host (2)");
		return;
	}
	if (h.dst_cid != vs.cid) {
		bad_packet(&h, used, buf, "rx dst_cid is not our guest_cid");
		return;
	}
	if (h.type != VS_TYPE_STREAM) {
		bad_packet(&h, used, buf, "rx type is not STREAM");
		reply_rst(&h);
		return;
	}
	if (h.op < VS_OP_REQUEST || h.op > VS_OP_CREDIT_REQUEST) {
		bad_packet(&h, used, buf, "rx op unknown");
		reply_rst(&h);
		return;
	}
	if (h.op != VS_OP_RW && h.len) {
		bad_packet(&h, used, buf, "rx len on a packet other than RW");
		return;
	}
	if (h.op == VS_OP_SHUTDOWN ? (h.flags & ~(u32)(VS_SHUT_RCV | VS_SHUT_SEND)) != 0 : h.flags != 0) {
		bad_packet(&h, used, buf, "rx flags not valid for the op");
		return;
	}
	struct vs_conn *c = &conn;
	if (c->state != C_NONE && c->state != C_CLOSED && h.dst_port == c->local && h.src_port == c->peer) {
		conn_packet(c, &h, payload);
		return;
	}
	if (vs.listening && h.op == VS_OP_REQUEST && h.dst_port == vs.listen_port && c->state == C_NONE) {
		if (h.fwd_cnt != 0)
			vs_fail("REQUEST with a fwd_cnt other than 0");
		c->local = h.dst_port;
		c->peer = h.src_port;
		c->peer_buf_alloc = h.buf_alloc;
		c->peer_fwd_cnt = h.fwd_cnt;
		c->tx_cnt = h.fwd_cnt;	/* nothing sent yet: in flight is 0 */
		c->state = C_OPEN;
		vs.listening = 0;
		conn_send(c, VS_OP_RESPONSE, 0, NULL, 0);
		return;
	}
	/* Not ours: a late packet of a connection we ended, or a REQUEST for a port we do
	 * not listen on. Refused with RST (5.10.6.4). */
	vs.stray++;
	reply_rst(&h);
}

/* Gives receive buffer `id` (descriptor id) to the device, its header cleared: a buffer
 * the device returns without writing it then shows an all-zero header. */
static void rx_post(u16 id)
{
	memset(vs_rx[id], 0, VS_HDR);
	vq_publish(&vs.rxq, id);
}

/* Takes every used buffer: transmit slots back, receive buffers handled and reposted,
 * events reported. With interrupts only after a queue interrupt came. */
static void vs_poll(void)
{
	/* Packets the device has not taken for 200 ms: notify again (a notification that
	 * came before the device was ready may be lost), and the receive queue with them. */
	if (ticks - vs.kick_tick >= 20) {
		int busy = 0;
		for (u16 i = 0; i < vs.ntx; i++)
			busy |= vs.tx_busy[i];
		if (busy) {
			vq_kick(&vs.dev, &vs.txq);
			vq_kick(&vs.dev, &vs.rxq);
			vs.rekicks++;
		}
		vs.kick_tick = ticks;
	}
	if (vs.dev.irq != IRQ_POLL) {
		if (vs.dev.irqs == vs.irqs_seen)
			return;
		vs.irqs_seen = vs.dev.irqs;
	}
	tx_reclaim();
	u32 len;
	int id, reposted = 0;
	while ((id = vq_pop(&vs.rxq, &len)) >= 0) {
		if ((u32)id >= vs.nrx || len > VS_RXBUF) {
			vs_fail("bad used element on the rx queue");
			continue;
		}
		rx_packet(vs_rx[id], len);
		rx_post((u16)id);
		reposted = 1;
	}
	if (reposted)
		vq_kick(&vs.dev, &vs.rxq);
	reposted = 0;
	while ((id = vq_pop(&vs.evq, &len)) >= 0) {
		if ((u32)id >= vs.nev) {
			vs_fail("bad used element on the event queue");
			continue;
		}
		u32 ev = *(volatile u32 *)vs_ev[id];
		vs.events++;
		puts("vsock-event: ");
		if (ev == VS_EVENT_TRANSPORT_RESET) {
			puts("transport-reset\n");
			if (conn.state != C_NONE)
				conn.state = C_CLOSED;
		} else {
			put_dec(ev);
			puts("\n");
		}
		vq_publish(&vs.evq, (u16)id);
		reposted = 1;
	}
	if (reposted)
		vq_kick(&vs.dev, &vs.evq);
}

/* After taking data out of the store: tell the peer (and answer its CREDIT_REQUEST). */
static void credit_update(struct vs_conn *c)
{
	if (c->state != C_OPEN && c->state != C_CLOSING)
		return;
	if (c->update_owed || (c->fwd_cnt != c->adv_fwd && !(c->peer_shut & VS_SHUT_SEND) &&
			       !(c->shut_sent & VS_SHUT_RCV))) {
		c->update_owed = 0;
		conn_send(c, VS_OP_CREDIT_UPDATE, 0, NULL, 0);
	}
}

/* Takes up to n bytes out of the store. */
static u32 store_take(struct vs_conn *c, u8 *dst, u32 n)
{
	if (n > c->len)
		n = c->len;
	for (u32 i = 0; i < n; i++)
		dst[i] = c->store[(c->head + i) % VS_BUF_ALLOC];
	c->head = (c->head + n) % VS_BUF_ALLOC;
	c->len -= n;
	c->fwd_cnt += n;
	return n;
}

/* Sends SHUTDOWN (both directions) and waits (at most about 3 s) for the peer's RST;
 * sends our own RST if none came. Prints "<key>: rst | rst-first | timeout". */
static void conn_close(struct vs_conn *c, const char *key)
{
	const char *how;
	if (c->rst) {
		how = "rst-first";	/* the peer ended it already */
	} else if (c->state == C_CLOSED) {
		how = "closed";
	} else if (conn_send(c, VS_OP_SHUTDOWN, VS_SHUT_RCV | VS_SHUT_SEND, NULL, 0) < 0) {
		how = "fail";
	} else {
		c->state = C_CLOSING;
		struct deadline d;
		deadline_start(&d, 3000);
		while (!c->rst && c->state != C_CLOSED) {
			vs_poll();
			/* Data still arriving is the peer's business; keep the store from filling. */
			while (c->len)
				store_take(c, vs_tmp, sizeof(vs_tmp));
			if (c->update_owed)
				credit_update(c);
			if (deadline_passed(&d))
				break;
			if (!c->rst)
				vs_idle();
		}
		if (c->rst) {
			how = "rst";
		} else {
			/* 5.10.6.4: the peer SHOULD answer with RST; it did not, end it ourselves. */
			conn_send(c, VS_OP_RST, 0, NULL, 0);
			how = "timeout";
		}
	}
	c->state = C_CLOSED;
	puts(key);
	puts(how);
	puts("\n");
}

/* ---- the two tests ---- */

static const char ping_msg[] = "ping from guest\n";

static void vsock_connect(void)
{
	struct vs_conn *c = &conn;
	conn_reset_state(c);
	c->local = VS_LOCAL_PORT;
	c->peer = opts.vsock_port;
	c->state = C_CONNECTING;
	/* The result line is printed once known: a bad packet meanwhile prints its own. */
	if (conn_send(c, VS_OP_REQUEST, 0, NULL, 0) < 0) {
		puts("vsock-connect: fail tx\n");
		return;
	}
	struct deadline d;
	deadline_start(&d, 3000);
	while (c->state == C_CONNECTING && !deadline_passed(&d)) {
		vs_poll();
		if (c->state == C_CONNECTING)
			vs_idle();
	}
	if (c->state != C_OPEN) {
		const char *why = c->rst ? "refused (RST)" : c->state == C_CONNECTING ? "no RESPONSE" : "closed";
		puts("vsock-connect: fail ");
		puts(why);
		puts("\n");
		char buf[48] = "connect: ";
		u32 n = 9;
		for (const char *p = why; *p && n < sizeof(buf) - 1; p++)
			buf[n++] = *p;
		buf[n] = 0;
		vs_fail(buf);
		if (c->state == C_CONNECTING)
			conn_send(c, VS_OP_RST, 0, NULL, 0);
		return;
	}
	puts("vsock-connect: ok\n");
	puts("vsock-peer: port=");
	put_dec(c->peer);
	puts(" buf_alloc=");
	put_dec(c->peer_buf_alloc);
	puts(" fwd_cnt=");
	put_dec(c->peer_fwd_cnt);
	puts("\n");

	/* Send the line, within the peer's credit (asking for credit if there is none). */
	u32 mlen = sizeof(ping_msg) - 1;
	deadline_start(&d, 3000);
	int sent = 0;
	while (!sent && c->state == C_OPEN && !deadline_passed(&d)) {
		if (peer_credit(c) >= mlen) {
			sent = conn_send(c, VS_OP_RW, 0, (const u8 *)ping_msg, mlen) == 0;
			break;
		}
		if (!c->credit_asked) {
			c->credit_asked = 1;
			conn_send(c, VS_OP_CREDIT_REQUEST, 0, NULL, 0);
		}
		vs_poll();
		vs_idle();
	}

	/* Read the echo: every byte taken out of the store is consumed at once. */
	static u8 got[VS_GOT_MAX];
	u32 ngot = 0;
	deadline_start(&d, 5000);
	while (sent && ngot < mlen && c->state == C_OPEN && !(c->peer_shut & VS_SHUT_SEND)) {
		vs_poll();
		ngot += store_take(c, got + ngot, VS_GOT_MAX - ngot);
		credit_update(c);
		if (ngot >= mlen || deadline_passed(&d))
			break;
		vs_idle();
	}
	/* Bytes that came with the last packets, or with a SHUTDOWN. */
	ngot += store_take(c, got + ngot, VS_GOT_MAX - ngot);
	credit_update(c);
	puts("vsock-echo: ");
	if (!sent) {
		puts("fail send\n");
		vs_fail("echo: could not send");
	} else if (ngot == mlen && !memcmp(got, ping_msg, mlen)) {
		puts("ok\n");
	} else {
		puts(ngot < mlen ? "short got=" : "mismatch got=");
		put_escaped(got, ngot);
		puts("\n");
		vs_fail(ngot < mlen ? "echo: short" : "echo: mismatch");
	}
	conn_close(c, "vsock-connect-close: ");
}

static void vsock_listen(void)
{
	struct vs_conn *c = &conn;
	conn_reset_state(c);
	vs.listen_port = opts.vsock_listen;
	vs.listening = 1;
	puts("vsock-listen: port=");
	put_dec(vs.listen_port);
	puts("\n");
	u32 wait_s = opts.vsock_wait ? opts.vsock_wait : 10;
	struct deadline d;
	deadline_start(&d, wait_s * 1000);
	while (c->state == C_NONE && !deadline_passed(&d)) {
		vs_poll();
		if (c->state == C_NONE)
			vs_idle();
	}
	vs.listening = 0;
	if (c->state == C_NONE) {
		puts("vsock-accept: fail no REQUEST bytes=0\n");
		vs_fail("accept: no REQUEST");
		return;
	}
	puts("vsock-peer: port=");
	put_dec(c->peer);
	puts(" buf_alloc=");
	put_dec(c->peer_buf_alloc);
	puts(" fwd_cnt=");
	put_dec(c->peer_fwd_cnt);
	puts("\n");

	/* Echo until the peer stops sending (SHUTDOWN with SEND, or RST), the byte count
	 * is reached, or the time is up. */
	u32 echoed = 0, limit = opts.vsock_bytes;
	const char *why = NULL;
	deadline_start(&d, wait_s * 1000);
	for (;;) {
		vs_poll();
		/* Send back what the store holds, within the peer's credit. */
		while (c->len && c->state == C_OPEN && !(c->peer_shut & VS_SHUT_RCV)) {
			u32 credit = peer_credit(c);
			if (!credit) {
				if (!c->credit_asked) {
					c->credit_asked = 1;
					conn_send(c, VS_OP_CREDIT_REQUEST, 0, NULL, 0);
				}
				break;
			}
			u32 n = c->len < VS_TXPAY ? c->len : VS_TXPAY;
			if (n > credit)
				n = credit;
			/* Taken out of the store now: the RW below advertises the new fwd_cnt. */
			n = store_take(c, vs_tmp, n);
			if (conn_send(c, VS_OP_RW, 0, vs_tmp, n) < 0)
				break;
			echoed += n;
		}
		credit_update(c);
		if (c->state != C_OPEN) {
			if (c->rst && (c->len || !(c->peer_shut & VS_SHUT_SEND)))
				why = "reset by the peer";
			break;
		}
		if (limit && echoed >= limit)
			break;
		if (c->peer_shut & VS_SHUT_RCV && c->len) {
			why = "the peer will not receive the echo";
			break;
		}
		if ((c->peer_shut & VS_SHUT_SEND) && !c->len)
			break;
		if (deadline_passed(&d)) {
			why = "timeout";
			break;
		}
		vs_idle();
	}
	puts("vsock-accept: ");
	if (why) {
		puts("fail ");
		puts(why);
		puts(" ");
		char buf[64] = "accept: ";
		u32 n = 8;
		for (const char *p = why; *p && n < sizeof(buf) - 1; p++)
			buf[n++] = *p;
		buf[n] = 0;
		vs_fail(buf);
	} else {
		puts("ok ");
	}
	puts("bytes=");
	put_dec(echoed);
	puts("\n");
	if (c->peer_shut == (VS_SHUT_RCV | VS_SHUT_SEND) && !c->rst) {
		/* The peer shut both directions: the RST that ends a clean disconnect is ours. */
		conn_send(c, VS_OP_RST, 0, NULL, 0);
		c->state = C_CLOSED;
		puts("vsock-accept-close: rst-sent\n");
	} else {
		conn_close(c, "vsock-accept-close: ");
	}
}

/* ---- device setup ---- */

static void vs_feature_names(u64 f)
{
	if (f & F(0))
		puts(" stream");
	if (f & F(1))
		puts(" seqpacket");
	if (f & F(F_VERSION_1))
		puts(" version-1");
}

void vsock_report(void)
{
	struct vdev *v = &vs.dev;
	memset(&vs, 0, sizeof(vs));
	conn_reset_state(&conn);
	v->name = "vsock";
	for (u32 e = 0; e < 4; e++)
		v->vec[e] = VEC_VSOCK + e;
	v->quiet_scan = 1;
	v->irq = opts.msix ? IRQ_MSIX : opts.intx ? IRQ_INTX : IRQ_POLL;
	if (opts.mmio && v->irq == IRQ_MSIX) {
		vdev_fail(v, "msix needs PCI");
		goto out;
	}
	if (opts.mmio ? vdev_find_mmio(v, 19, "socket device") < 0
		      : vdev_find_pci(v, 0x1053, 0x1053, "virtio-vsock") < 0)
		goto out;
	/* VIRTIO_VSOCK_F_STREAM (bit 0) is implied when no type bit is offered (5.10.3);
	 * SEQPACKET is not used. */
	u64 feat = vdev_negotiate(v, F(0) | F(F_ACCESS_PLATFORM), vs_feature_names);
	if (!feat)
		goto out;
	vdev_irq_prepare(v);
	if (v->irq == IRQ_MSIX && vdev_setup_msix(v, 4) < 0)
		goto stop;
	if (v->irq == IRQ_INTX && vdev_setup_intx(v) < 0)
		goto stop;
	if (v->irq == IRQ_POLL)
		put_key(v, "-irq: poll\n");

	/* guest_cid: le64; the upper 32 bits are reserved (zero), 0-2 and ~0U are not guests. */
	u64 cid = vdev_cfg_read(v, 0, 1);
	puts("vsock-cid: ");
	put_dec(cid);
	puts("\n");
	if (cid <= VS_HOST_CID || cid >= 0xffffffffUL) {
		vdev_fail(v, "guest_cid is reserved or too large");
		goto stop;
	}
	vs.cid = cid;

	if (vq_setup(v, &vs.rxq, 0, &vs_rings[0], VQ_MAX, 1) < 0 ||
	    vq_setup(v, &vs.txq, 1, &vs_rings[1], VQ_MAX, 1) < 0 ||
	    vq_setup(v, &vs.evq, 2, &vs_rings[2], VQ_MAX, 1) < 0)
		goto stop;
	vs.nrx = vs.rxq.size < VS_NRX ? vs.rxq.size : VS_NRX;
	vs.ntx = vs.txq.size < VS_NTX ? vs.txq.size : VS_NTX;
	vs.nev = vs.evq.size < VS_NEV ? vs.evq.size : VS_NEV;
	/* Receive buffers: descriptor i is always buffer i, header and payload in one. */
	for (u16 i = 0; i < vs.nrx; i++) {
		vs.rxq.desc[i].addr = (u64)vs_rx[i];
		vs.rxq.desc[i].len = VS_RXBUF;
		vs.rxq.desc[i].flags = DESC_F_WRITE;
		vs.rxq.desc[i].next = 0;
		rx_post(i);
	}
	/* The event queue is kept filled (5.10.6.1). */
	for (u16 i = 0; i < vs.nev; i++) {
		vs.evq.desc[i].addr = (u64)vs_ev[i];
		vs.evq.desc[i].len = sizeof(vs_ev[i]);
		vs.evq.desc[i].flags = DESC_F_WRITE;
		vs.evq.desc[i].next = 0;
		vq_publish(&vs.evq, i);
	}
	if (vdev_driver_ok(v) < 0)
		goto stop;
	/* The timer bounds every wait and wakes the polling loop too. */
	if (v->irq == IRQ_POLL) {
		pic_mask_all();
		lapic_wr(0x80, 0);
	}
	timer_start();
	vq_kick(v, &vs.rxq);
	vq_kick(v, &vs.evq);

	if (opts.vsock)
		vsock_connect();
	if (opts.vsock_listen_set)
		vsock_listen();
	vs_poll();

	puts("vsock-stats: rx=");
	put_dec(vs.rx_pkts);
	puts(" tx=");
	put_dec(vs.tx_pkts);
	puts(" credit-update=");
	put_dec(vs.updates_sent);
	putc('/');
	put_dec(vs.updates_got);
	puts(" credit-request=");
	put_dec(vs.requests_sent);
	putc('/');
	put_dec(vs.requests_got);
	puts(" rst-sent=");
	put_dec(vs.rst_sent);
	puts(" stray=");
	put_dec(vs.stray);
	puts(" late=");
	put_dec(vs.late);
	puts(" rekick=");
	put_dec(vs.rekicks);
	puts("\n");
	timer_stop();
	if (v->irq != IRQ_POLL) {
		vdev_put_irqs(v);
		if (!v->err && !v->irqs)
			vdev_fail(v, "no queue interrupts");
	}
stop:
	vdev_stop(v);
out:
	vdev_put_result(v);
}
