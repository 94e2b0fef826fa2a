/*
 * A small virtio 1.x network driver (token `net`, spec 5.1) over PCI or virtio-mmio
 * (`mmio`), with the transports of virtio.c.
 *
 * Receive queue 0 gets up to 16 buffers of 12 + 1526 bytes, transmit queue 1 sends one
 * frame per descriptor (header and frame in one buffer). The driver then speaks just
 * enough IPv4 to check the path end to end: an ARP request for the peer (`peer=`,
 * default 192.0.2.1) and its reply, then an ICMP echo request with 56 known payload
 * bytes and its reply. While it waits it answers ARP requests for its own address
 * (`ip=`, default 192.0.2.2) and ICMP echo requests to it, and with `net-serve=SECONDS`
 * it goes on answering for that long. With `mq` it enables a second queue pair through
 * the control queue and sends through transmit queue 3. With `gw=A.B.C.D` (see "Gateway"
 * below) the peer may be off the subnet. See README.md for the report.
 */
#include "virtio.h"

/* Feature bits (5.1.3) */
#define NET_F_CSUM 0
#define NET_F_GUEST_CSUM 1
#define NET_F_MTU 3
#define NET_F_MAC 5
#define NET_F_MRG_RXBUF 15
#define NET_F_STATUS 16
#define NET_F_CTRL_VQ 17
#define NET_F_MQ 22

#define NET_S_LINK_UP 1

/* Control queue (5.1.6.5) */
#define CTRL_MQ 4
#define CTRL_MQ_VQ_PAIRS_SET 0
#define CTRL_OK 0

/* struct virtio_net_hdr (5.1.6): always 12 bytes with VERSION_1 */
#define NET_HDR 12
#define HDR_NUM_BUFFERS 10
#define MTU_FRAME 1526		/* 1514 + VLAN tag + slack, as the brief of the buffers */
#define RX_BUF (NET_HDR + MTU_FRAME)
#define RX_STRIDE 1544		/* 8-byte aligned buffers */
#define NRX 16
#define NTX 8
#define TX_BUF 1536

#define MAX_PAIRS 2
#define ICMP_ID 0x5256		/* "RV" */
#define PING_PAYLOAD 56

static struct vring_page rx_rings[MAX_PAIRS] NOINIT;
static struct vring_page tx_rings[MAX_PAIRS] NOINIT;
static struct vring_page ctrl_ring NOINIT;
static u8 rx_bufs[MAX_PAIRS][NRX][RX_STRIDE] NOINIT __attribute__((aligned(8)));
static u8 tx_bufs[NTX][TX_BUF] NOINIT __attribute__((aligned(8)));

static struct vdev vdev;
static struct vq rxq[MAX_PAIRS], txq[MAX_PAIRS], ctrlq;
static u32 npairs;		/* queue pairs set up (1, or 2 with mq) */
static struct vq *txcur;	/* where frames go */
static int txcur_pair;
static u8 tx_busy[NTX];
static u32 ntx;			/* usable tx slots: min(NTX, tx queue size) */
static u64 feat;

static u8 mac[6], peer_mac[6];
static int have_peer_mac;
static int ping_ok;
static u32 ping_bytes;
static const char *ping_bad;
static u16 ip_id = 1;
static u32 rx_frames[MAX_PAIRS], tx_frames, rx_merged, rx_ignored;
static u32 arp_answered, ping_answered;

static void net_fail(const char *reason) { vdev_fail(&vdev, reason); }

/* ---- bytes ---- */

static u16 get16(const u8 *p) { return (u16)(p[0] << 8 | p[1]); }
static void set16(u8 *p, u16 v)
{
	p[0] = v >> 8;
	p[1] = (u8)v;
}
static int eq4(const u8 *a, const u8 *b) { return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3]; }
static void cp(u8 *d, const u8 *s, u32 n)
{
	while (n--)
		*d++ = *s++;
}

/* The Internet checksum (RFC 1071) of n bytes. */
static u16 csum(const u8 *p, u32 n)
{
	u32 sum = 0;
	for (; n >= 2; p += 2, n -= 2)
		sum += (u32)p[0] << 8 | p[1];
	if (n)
		sum += (u32)p[0] << 8;
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (u16)~sum;
}

static void put_mac(const u8 *m)
{
	for (int i = 0; i < 6; i++) {
		if (i)
			putc(':');
		put_hexn(m[i], 2);
	}
}

static void put_ip(const u8 *a)
{
	for (int i = 0; i < 4; i++) {
		if (i)
			putc('.');
		put_dec(a[i]);
	}
}

/* ---- Gateway (`gw=A.B.C.D`) ----
 *
 * Without gw= the peer is on the link: it is ARPed and pinged directly. With gw= the
 * probe ARPs the gateway instead and sends the echo request for the peer to the
 * gateway's MAC (the peer may be anywhere behind it). Replies to requests always go
 * back to the requester's source MAC, so answering works through a router either way.
 * The token is parsed here, from the command line, to keep it inside this driver. */
static u8 gw[4];
static int have_gw;

static int parse_gw(void)
{
	const char *s = cmdline;
	while (*s) {
		while (*s == ' ' || *s == '\t' || *s == '\n')
			s++;
		const char *t = s;
		while (*s && *s != ' ' && *s != '\t' && *s != '\n')
			s++;
		if (s - t < 3 || t[0] != 'g' || t[1] != 'w' || t[2] != '=')
			continue;
		const char *p = t + 3;
		u8 a[4];
		int ok = 1;
		for (int i = 0; i < 4 && ok; i++) {
			u32 v = 0, digits = 0;
			while (p < s && *p >= '0' && *p <= '9' && digits < 4) {
				v = v * 10 + (u32)(*p++ - '0');
				digits++;
			}
			ok = digits && v <= 255;
			a[i] = (u8)v;
			if (ok && i < 3)
				ok = p < s && *p++ == '.';
		}
		if (ok && p == s) {
			cp(gw, a, 4);
			have_gw = 1;
		}
	}
	return have_gw;
}

/* The address whose MAC the frames for the peer go to. */
static const u8 *next_hop(void) { return have_gw ? gw : opts.peer; }

static void feature_names(u64 f)
{
	static const struct {
		u8 bit;
		const char *name;
	} names[] = {
		{ NET_F_CSUM, "CSUM" }, { NET_F_GUEST_CSUM, "GUEST_CSUM" }, { NET_F_MTU, "MTU" },
		{ NET_F_MAC, "MAC" }, { NET_F_MRG_RXBUF, "MRG_RXBUF" }, { NET_F_STATUS, "STATUS" },
		{ NET_F_CTRL_VQ, "CTRL_VQ" }, { NET_F_MQ, "MQ" }, { F_VERSION_1, "VERSION_1" },
	};
	for (u32 i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (f & F(names[i].bit)) {
			putc(' ');
			puts(names[i].name);
		}
}

/* ---- transmit ---- */

static void reclaim_tx(void)
{
	u32 len;
	int id;
	for (u32 p = 0; p < npairs; p++)
		while ((id = vq_pop(&txq[p], &len)) >= 0)
			if ((u32)id < NTX)
				tx_busy[id] = 0;
}

/* A free transmit buffer (its frame part, past the header), or NULL after ~1 s. */
static u8 *tx_get(int *slot)
{
	u64 t0 = rdtsc(), tick0 = ticks;
	for (;;) {
		reclaim_tx();
		for (u32 i = 0; i < ntx; i++)
			if (!tx_busy[i]) {
				*slot = (int)i;
				memset(tx_bufs[i], 0, NET_HDR + 60);	/* header, minimum frame */
				return tx_bufs[i] + NET_HDR;
			}
		if (rdtsc() - t0 > 1000 * TSC_PER_MS || ticks - tick0 > 100) {
			net_fail("transmit queue stuck");
			return NULL;
		}
		vdev_idle(&vdev);
	}
}

static void tx_send(int slot, u32 frame_len)
{
	if (frame_len < 60)
		frame_len = 60;	/* Ethernet minimum, zero-padded by tx_get */
	struct vq *q = txcur;
	q->desc[slot].addr = (u64)tx_bufs[slot];
	q->desc[slot].len = NET_HDR + frame_len;
	q->desc[slot].flags = 0;
	q->desc[slot].next = 0;
	tx_busy[slot] = 1;
	vq_publish(q, (u16)slot);
	vq_kick(&vdev, q);
	tx_frames++;
}

static void eth_header(u8 *f, const u8 *dst, u16 type)
{
	cp(f, dst, 6);
	cp(f + 6, mac, 6);
	set16(f + 12, type);
}

static void send_arp(u16 oper, const u8 *dst_mac, const u8 *tha, const u8 *tpa)
{
	static const u8 bcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
	int slot;
	u8 *f = tx_get(&slot);
	if (!f)
		return;
	eth_header(f, dst_mac ? dst_mac : bcast, 0x0806);
	u8 *a = f + 14;
	set16(a, 1);		/* Ethernet */
	set16(a + 2, 0x0800);	/* IPv4 */
	a[4] = 6;
	a[5] = 4;
	set16(a + 6, oper);
	cp(a + 8, mac, 6);
	cp(a + 14, opts.ip, 4);
	if (tha)
		cp(a + 18, tha, 6);
	cp(a + 24, tpa, 4);
	tx_send(slot, 42);
}

/* An IPv4 + ICMP frame to dst (MAC) / dst_ip: `icmp` (icmp_len bytes, checksum field
 * filled in here) is copied behind a fresh IP header. */
static void send_icmp(const u8 *dst, const u8 *dst_ip, const u8 *icmp, u32 icmp_len)
{
	if (icmp_len > 1480)
		return;
	int slot;
	u8 *f = tx_get(&slot);
	if (!f)
		return;
	eth_header(f, dst, 0x0800);
	u8 *ip = f + 14;
	ip[0] = 0x45;
	ip[1] = 0;
	set16(ip + 2, (u16)(20 + icmp_len));
	set16(ip + 4, ip_id++);
	set16(ip + 6, 0x4000);	/* don't fragment */
	ip[8] = 64;
	ip[9] = 1;		/* ICMP */
	set16(ip + 10, 0);
	cp(ip + 12, opts.ip, 4);
	cp(ip + 16, dst_ip, 4);
	set16(ip + 10, csum(ip, 20));
	u8 *ic = ip + 20;
	cp(ic, icmp, icmp_len);
	set16(ic + 2, 0);
	set16(ic + 2, csum(ic, icmp_len));
	tx_send(slot, 14 + 20 + icmp_len);
}

static void ping_payload(u8 *p)
{
	for (u32 i = 0; i < PING_PAYLOAD; i++)
		p[i] = (u8)(0x30 + i);
}

static void send_ping(void)
{
	u8 icmp[8 + PING_PAYLOAD];
	icmp[0] = 8;	/* echo request */
	icmp[1] = 0;
	set16(icmp + 4, ICMP_ID);
	set16(icmp + 6, 1);	/* seq */
	ping_payload(icmp + 8);
	send_icmp(peer_mac, opts.peer, icmp, sizeof(icmp));
}

/* ---- receive ---- */

static void rx_arp(const u8 *f, u32 len)
{
	if (len < 42)
		return;
	const u8 *a = f + 14;
	if (get16(a) != 1 || get16(a + 2) != 0x0800 || a[4] != 6 || a[5] != 4)
		return;
	u16 oper = get16(a + 6);
	const u8 *sha = a + 8, *spa = a + 14, *tpa = a + 24;
	if (eq4(spa, next_hop()) && (oper == 2 || oper == 1) && eq4(tpa, opts.ip)) {
		if (!have_peer_mac)
			cp(peer_mac, sha, 6);
		have_peer_mac = 1;
	}
	if (oper == 1 && eq4(tpa, opts.ip)) {
		send_arp(2, sha, sha, spa);
		arp_answered++;
	}
}

static void rx_ipv4(const u8 *f, u32 len)
{
	if (len < 14 + 20)
		return;
	const u8 *ip = f + 14;
	u32 ihl = (ip[0] & 15) * 4, total = get16(ip + 2);
	if ((ip[0] >> 4) != 4 || ihl < 20 || total < ihl || total > len - 14)
		return;
	if (csum(ip, ihl) != 0 || !eq4(ip + 16, opts.ip) || ip[9] != 1)
		return;
	if (get16(ip + 6) & 0x3fff)
		return;	/* a fragment */
	const u8 *ic = ip + ihl;
	u32 icmp_len = total - ihl;
	if (icmp_len < 8 || icmp_len > 1480 || csum(ic, icmp_len) != 0)
		return;
	if (ic[0] == 8 && ic[1] == 0) {
		/* echo request: answer with the same id, sequence and data */
		static u8 reply[1480];
		cp(reply, ic, icmp_len);
		reply[0] = 0;
		send_icmp(f + 6, ip + 12, reply, icmp_len);
		ping_answered++;
	} else if (ic[0] == 0 && get16(ic + 4) == ICMP_ID && eq4(ip + 12, opts.peer) && !ping_ok) {
		u8 want[PING_PAYLOAD];
		ping_payload(want);
		if (get16(ic + 6) != 1)
			ping_bad = "echo reply with another sequence number";
		else if (icmp_len != 8 + PING_PAYLOAD || memcmp(ic + 8, want, PING_PAYLOAD))
			ping_bad = "echo reply data differs";
		else {
			ping_ok = 1;
			ping_bytes = icmp_len;
		}
	}
}

static void rx_frame(const u8 *f, u32 len)
{
	if (len < 14)
		return;
	u16 type = get16(f + 12);
	if (type == 0x0806)
		rx_arp(f, len);
	else if (type == 0x0800)
		rx_ipv4(f, len);
	else
		rx_ignored++;
}

static void post_rx(struct vq *q, u16 id) { vq_publish(q, id); }

/* Handles every received frame and gives the buffers back. */
static void net_poll(void)
{
	reclaim_tx();
	for (u32 p = 0; p < npairs; p++) {
		struct vq *q = &rxq[p];
		int any = 0;
		u32 len;
		int id;
		while ((id = vq_pop(q, &len)) >= 0) {
			any = 1;
			if ((u32)id >= q->size || len > RX_BUF) {
				net_fail("bad used element on the receive queue");
				continue;
			}
			u8 *buf = rx_bufs[p][id];
			u16 nbuf = buf[HDR_NUM_BUFFERS] | buf[HDR_NUM_BUFFERS + 1] << 8;
			if (len >= NET_HDR)
				rx_frame(buf + NET_HDR, len - NET_HDR);
			rx_frames[p]++;
			post_rx(q, (u16)id);
			/* A frame merged over several buffers (MRG_RXBUF): ours are big enough for
			 * any frame, so the rest is dropped. */
			if ((feat & F(NET_F_MRG_RXBUF)) && nbuf > 1) {
				rx_merged++;
				for (u16 k = 1; k < nbuf; k++) {
					u64 t0 = rdtsc();
					while ((id = vq_pop(q, &len)) < 0 && rdtsc() - t0 < 100 * TSC_PER_MS)
						cpu_relax();
					if (id >= 0 && (u32)id < q->size)
						post_rx(q, (u16)id);
				}
			}
		}
		if (any)
			vq_kick(&vdev, q);
	}
}

/* Handles what the device has used: always when polling; with interrupts only after a
 * queue interrupt (as an interrupt-driven driver would), so that a device that does
 * not interrupt is noticed rather than covered by the timer wake-ups. */
static u32 irqs_handled;
static void net_service(void)
{
	if (vdev.irq != IRQ_POLL) {
		u32 n = vdev.irqs;
		if (n == irqs_handled)
			return;
		irqs_handled = n;
	}
	net_poll();
}

/* Serves the queues until *flag is set or about `ms` have passed, calling resend()
 * every ~second. */
static int wait_for(int *flag, u32 ms, void (*resend)(void))
{
	u64 t0 = rdtsc(), tick0 = ticks, last = t0;
	for (;;) {
		net_service();
		if (*flag)
			return 1;
		u64 now = rdtsc();
		if (now - t0 > ms * TSC_PER_MS || ticks - tick0 > ms / 10)
			return 0;
		if (resend && now - last > 1000 * TSC_PER_MS) {
			last = now;
			resend();
		}
		vdev_idle(&vdev);
	}
}

static void resend_arp(void) { send_arp(1, NULL, NULL, next_hop()); }

/* Answers ARP and ping for at least `secs` seconds of RTC time (bounded by the TSC). */
static void serve(u32 secs)
{
	puts("net-serve: ");
	put_dec(secs);
	puts(" s\n");
	u32 arp0 = arp_answered, ping0 = ping_answered;
	u8 last = rtc_second();
	u32 changes = 0;
	u64 t0 = rdtsc(), checked = t0;
	while (changes <= secs) {
		net_service();
		u64 now = rdtsc();
		if (now - checked > TSC_PER_MS) {
			checked = now;
			u8 s = rtc_second();
			if (s != 0xff && s != last) {
				if (last != 0xff)
					changes++;
				last = s;
			}
		}
		if (now - t0 > (u64)(secs + 2) * 1000 * TSC_PER_MS)
			break;	/* the RTC does not tick */
		vdev_idle(&vdev);
	}
	puts("net-served: arp=");
	put_dec(arp_answered - arp0);
	puts(" ping=");
	put_dec(ping_answered - ping0);
	puts("\n");
}

/* ---- setup ---- */

static int mq_enable(struct vdev *v, u16 pairs)
{
	static struct {
		u8 class, cmd;
	} hdr __attribute__((aligned(8)));
	static u16 data __attribute__((aligned(8)));
	static volatile u8 ack __attribute__((aligned(8)));
	hdr.class = CTRL_MQ;
	hdr.cmd = CTRL_MQ_VQ_PAIRS_SET;
	data = pairs;
	ack = 0xff;
	struct seg s[3] = {
		{ &hdr, sizeof(hdr), 0 },
		{ &data, sizeof(data), 0 },
		{ (void *)&ack, 1, 1 },
	};
	if (vq_run(v, &ctrlq, s, 3, NULL) < 0)
		return -1;
	return ack;
}

static void run(struct vdev *v)
{
	u64 want = F(F_ACCESS_PLATFORM) | F(NET_F_MAC) | F(NET_F_STATUS) | F(NET_F_MRG_RXBUF) | F(NET_F_CSUM) | F(NET_F_MTU);
	if (opts.mq)
		want |= F(NET_F_CTRL_VQ) | F(NET_F_MQ);
	feat = vdev_negotiate(v, want, feature_names);
	if (!feat)
		return;
	int mq = opts.mq && (feat & F(NET_F_MQ)) && (feat & F(NET_F_CTRL_VQ));
	u16 max_pairs = 1;
	if (feat & F(NET_F_MQ))
		max_pairs = vdev_cfg16(v, 8);

	if (feat & F(NET_F_MAC)) {
		for (u32 i = 0; i < 6; i++)
			mac[i] = vdev_cfg8(v, i);
	} else {
		static const u8 own[6] = { 0x02, 0x00, 0x00, 0x00, 0x00, 0x02 };
		cp(mac, own, 6);
	}
	puts("net-mac: ");
	put_mac(mac);
	puts(feat & F(NET_F_MAC) ? "\n" : " (driver's own)\n");
	puts("net-link: ");
	if (feat & F(NET_F_STATUS))
		puts(vdev_cfg16(v, 6) & NET_S_LINK_UP ? "up\n" : "down\n");
	else
		puts("up (no STATUS feature)\n");
	/* VIRTIO_NET_F_MTU: the device's MTU (config offset 10), e.g. an overlay's. */
	if (feat & F(NET_F_MTU)) {
		puts("net-mtu: ");
		put_dec(vdev_cfg16(v, 10));
		puts("\n");
	}
	puts("net-config: ip=");
	put_ip(opts.ip);
	puts(" peer=");
	put_ip(opts.peer);
	if (parse_gw()) {
		puts(" gw=");
		put_ip(gw);
	}
	if (feat & F(NET_F_MQ)) {
		puts(" max_virtqueue_pairs=");
		put_dec(max_pairs);
	}
	puts("\n");
	if (opts.mq && !mq) {
		puts("net-mq: not offered\n");
	} else if (mq && max_pairs < 2) {
		puts("net-mq: max_virtqueue_pairs=");
		put_dec(max_pairs);
		puts(", not enough\n");
		mq = 0;
	}
	npairs = mq ? 2 : 1;
	u16 ctrl_index = (feat & F(NET_F_MQ)) ? 2 * max_pairs : 2;
	u32 nqueues = 2 * npairs + (mq ? 1 : 0);

	vdev_irq_prepare(v);
	if (v->irq == IRQ_MSIX && vdev_setup_msix(v, 1 + nqueues) < 0)
		return;
	if (v->irq == IRQ_INTX && vdev_setup_intx(v) < 0)
		return;
	if (v->irq == IRQ_POLL)
		puts("net-irq: poll\n");
	for (u32 p = 0; p < npairs; p++) {
		if (vq_setup(v, &rxq[p], 2 * p, &rx_rings[p], NRX, 1) < 0 ||
		    vq_setup(v, &txq[p], 2 * p + 1, &tx_rings[p], VQ_MAX, 1) < 0)
			return;
	}
	if (mq && vq_setup(v, &ctrlq, ctrl_index, &ctrl_ring, VQ_MAX, 1) < 0)
		return;
	/* Receive buffers: descriptor i is buffer i, for good. */
	for (u32 p = 0; p < npairs; p++) {
		struct vq *q = &rxq[p];
		for (u16 i = 0; i < q->size; i++) {
			q->desc[i].addr = (u64)rx_bufs[p][i];
			q->desc[i].len = RX_BUF;
			q->desc[i].flags = DESC_F_WRITE;
			q->desc[i].next = 0;
			post_rx(q, i);
		}
	}
	ntx = txq[0].size < NTX ? txq[0].size : NTX;
	if (npairs > 1 && txq[1].size < ntx)
		ntx = txq[1].size;
	memset(tx_busy, 0, sizeof(tx_busy));
	txcur = &txq[0];
	txcur_pair = 0;
	if (vdev_driver_ok(v) < 0)
		return;
	if (v->irq != IRQ_POLL)
		timer_start();
	for (u32 p = 0; p < npairs; p++)
		vq_kick(v, &rxq[p]);

	if (mq) {
		int ack = mq_enable(v, 2);
		if (ack != CTRL_OK) {
			puts("net-mq: fail ack=");
			if (ack < 0)
				puts("none");
			else
				put_dec((u32)ack);
			puts("\n");
			net_fail("VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET");
			mq = 0;
		} else {
			txcur = &txq[1];	/* queue 3 */
			txcur_pair = 1;
		}
	}

	/* ARP for the peer (or the gateway): retried every second, at most about 3 s. */
	send_arp(1, NULL, NULL, next_hop());
	int got = wait_for(&have_peer_mac, 3000, resend_arp);
	puts("net-arp: ");
	if (got) {
		put_mac(peer_mac);
		puts("\n");
	} else {
		puts("timeout\n");
		net_fail("no ARP reply from the peer");
	}
	if (got) {
		send_ping();
		int ok = wait_for(&ping_ok, 3000, send_ping);
		puts("net-ping: ");
		if (ok) {
			puts("ok seq=1 bytes=");
			put_dec(ping_bytes);
			puts("\n");
		} else {
			puts(ping_bad ? ping_bad : "timeout");
			puts("\n");
			net_fail(ping_bad ? ping_bad : "no echo reply");
		}
		if (mq && txcur_pair == 1) {
			puts("net-mq: pairs=2 ");
			puts(ok ? "ok\n" : "fail\n");
		}
	}
	if (opts.net_serve)
		serve(opts.net_serve);

	puts("net-stats: tx=");
	put_dec(tx_frames);
	for (u32 p = 0; p < npairs; p++) {
		puts(" rx");
		put_dec(2 * p);
		putc('=');
		put_dec(rx_frames[p]);
	}
	puts(" merged=");
	put_dec(rx_merged);
	puts(" arp-answered=");
	put_dec(arp_answered);
	puts(" ping-answered=");
	put_dec(ping_answered);
	puts("\n");
	if (v->irq != IRQ_POLL) {
		timer_stop();
		vdev_put_irqs(v);
		if (v->irq == IRQ_MSIX) {
			/* per MSI-X entry: 1 + queue index (rx 0, tx 1, rx 2, tx 3, ctrl) */
			puts("net-msix-irqs:");
			for (u32 e = 1; e < v->msix_entries; e++) {
				putc(' ');
				put_dec(e);
				putc('=');
				put_dec(v->entry_irqs[e]);
			}
			puts("\n");
		}
		if (!v->irqs)
			net_fail("no queue interrupts");
	}
	vdev_stop(v);
}

void net_report(void)
{
	struct vdev *v = &vdev;
	memset(v, 0, sizeof(*v));
	v->name = "net";
	v->quiet_scan = 1;
	v->irq = opts.msix ? IRQ_MSIX : opts.intx ? IRQ_INTX : IRQ_POLL;
	for (u32 e = 0; e < VDEV_MAX_VEC; e++)
		v->vec[e] = VEC_NET + e;
	if (opts.mmio && v->irq == IRQ_MSIX) {
		vdev_fail(v, "msix needs PCI");
	} else if (opts.mmio ? vdev_find_mmio(v, 1, "network device") == 0
			     : vdev_find_pci(v, 0x1041, 0x1000, "virtio-net") == 0) {
		run(v);
	}
	vdev_put_result(v);
}
