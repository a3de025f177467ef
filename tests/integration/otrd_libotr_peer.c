/*
 * A reference OTR peer for otrd's interop test, built from libotr (Debian libotr5-dev) by
 * tests/integration/test_otrd_libotr.py. It speaks a line protocol on stdin/stdout:
 *
 *   usage: otrd_libotr_peer KEYFILE INSTAGFILE [SMP_SECRET]
 *     (KEYFILE is created with a new DSA key if it does not exist)
 *   prints at start:   FPR <40 hex>            our fingerprint
 *   commands (stdin):  WIRE <otr message>      a message from the other side
 *                      SEND <text>             encrypt and send <text>
 *                      QUERY                   send an OTR query (ask the other side for an AKE)
 *                      DISCONNECT              end the private conversation
 *                      SMP <secret>            start SMP with <secret>
 *                      STATUS                  prints STATE <0 plain|1 encrypted|2 finished> <fpr|->
 *   output (stdout):   WIRE <otr message>      send this to the other side
 *                      RECV <text>             a decrypted message
 *                      PLAIN <text>            a non-OTR message (libotr passed it through)
 *                      SECURE <fpr>            gone secure; the other side's fingerprint
 *                      INSECURE                gone insecure
 *                      SMP <event>             libotr's OtrlSMPEvent number
 *                      EVENT <n>               libotr's OtrlMessageEvent number
 *                      OK                      the command is done (always last)
 * Newlines inside OTR messages (only in query text) are printed as spaces.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libotr/proto.h>
#include <libotr/userstate.h>
#include <libotr/message.h>
#include <libotr/privkey.h>
#include <libotr/instag.h>

#define ACCOUNT "libotr"
#define PROTOCOL "tox"
#define PEER "otrd"
#define MAX_MSG 1372

static OtrlUserState us;
static OtrlMessageAppOps ops;
static const char *instag_file;
static const char *smp_secret;

static void out(const char *kind, const char *text) {
    printf("%s", kind);
    if (text) {
        putchar(' ');
        for (const char *p = text; *p; p++) putchar(*p == '\n' || *p == '\r' ? ' ' : *p);
    }
    putchar('\n');
    fflush(stdout);
}

static void hex(const unsigned char *fp, char *buf) {
    for (int i = 0; i < 20; i++) sprintf(buf + 2 * i, "%02x", fp[i]);
    buf[40] = '\0';
}

static OtrlPolicy op_policy(void *o, ConnContext *c) {
    return OTRL_POLICY_ALLOW_V2 | OTRL_POLICY_ALLOW_V3;
}
static void op_create_privkey(void *o, const char *a, const char *p) {}
static int op_is_logged_in(void *o, const char *a, const char *p, const char *r) { return 1; }
static void op_inject(void *o, const char *a, const char *p, const char *r, const char *m) {
    out("WIRE", m);
}
static void op_noop(void *o) {}
static void op_new_fpr(void *o, OtrlUserState u, const char *a, const char *p, const char *n,
                       unsigned char fp[20]) {}
static void op_gone_secure(void *o, ConnContext *c) {
    char buf[41] = "-";
    if (c->active_fingerprint) hex(c->active_fingerprint->fingerprint, buf);
    out("SECURE", buf);
}
static void op_gone_insecure(void *o, ConnContext *c) { out("INSECURE", NULL); }
static void op_still_secure(void *o, ConnContext *c, int is_reply) {}
static int op_max_size(void *o, ConnContext *c) { return MAX_MSG; }
static void op_smp_event(void *o, OtrlSMPEvent ev, ConnContext *c, unsigned short pct, char *q) {
    char buf[16];
    snprintf(buf, sizeof buf, "%d", (int)ev);
    out("SMP", buf);
    if (ev == OTRL_SMPEVENT_ASK_FOR_SECRET && smp_secret)
        otrl_message_respond_smp(us, &ops, o, c, (const unsigned char *)smp_secret,
                                 strlen(smp_secret));
}
static void op_msg_event(void *o, OtrlMessageEvent ev, ConnContext *c, const char *m,
                         gcry_error_t err) {
    char buf[16];
    snprintf(buf, sizeof buf, "%d", (int)ev);
    out("EVENT", buf);
}
static void op_create_instag(void *o, const char *a, const char *p) {
    otrl_instag_generate(us, instag_file, a, p);
}

static void setup_ops(void) {
    memset(&ops, 0, sizeof ops);
    ops.policy = op_policy;
    ops.create_privkey = op_create_privkey;
    ops.is_logged_in = op_is_logged_in;
    ops.inject_message = op_inject;
    ops.update_context_list = op_noop;
    ops.new_fingerprint = op_new_fpr;
    ops.write_fingerprints = op_noop;
    ops.gone_secure = op_gone_secure;
    ops.gone_insecure = op_gone_insecure;
    ops.still_secure = op_still_secure;
    ops.max_message_size = op_max_size;
    ops.handle_smp_event = op_smp_event;
    ops.handle_msg_event = op_msg_event;
    ops.create_instag = op_create_instag;
}

static ConnContext *context(void) {
    return otrl_context_find(us, PEER, ACCOUNT, PROTOCOL, OTRL_INSTAG_BEST, 1, NULL, NULL, NULL);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s KEYFILE INSTAGFILE [SMP_SECRET]\n", argv[0]);
        return 2;
    }
    instag_file = argv[2];
    smp_secret = argc > 3 ? argv[3] : NULL;
    OTRL_INIT;
    us = otrl_userstate_create();
    setup_ops();
    if (access(argv[1], R_OK) != 0 && otrl_privkey_generate(us, argv[1], ACCOUNT, PROTOCOL)) {
        fprintf(stderr, "cannot generate a key in %s\n", argv[1]);
        return 1;
    }
    if (otrl_privkey_read(us, argv[1])) {
        fprintf(stderr, "cannot read the key %s\n", argv[1]);
        return 1;
    }
    unsigned char raw[20];
    char fpr[41];
    if (!otrl_privkey_fingerprint_raw(us, raw, ACCOUNT, PROTOCOL)) return 1;
    hex(raw, fpr);
    out("FPR", fpr);

    static char line[1 << 20];
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\r\n")] = '\0';
        char *arg = strchr(line, ' ');
        if (arg) *arg++ = '\0';
        else arg = "";
        if (!strcmp(line, "WIRE")) {
            char *newmsg = NULL;
            OtrlTLV *tlvs = NULL;
            int internal = otrl_message_receiving(us, &ops, NULL, ACCOUNT, PROTOCOL, PEER, arg,
                                                  &newmsg, &tlvs, NULL, NULL, NULL);
            if (!internal) out(newmsg ? "RECV" : "PLAIN", newmsg ? newmsg : arg);
            if (newmsg) otrl_message_free(newmsg);
            if (tlvs) otrl_tlv_free(tlvs);
        } else if (!strcmp(line, "SEND")) {
            char *msg = NULL;
            gcry_error_t err = otrl_message_sending(us, &ops, NULL, ACCOUNT, PROTOCOL, PEER,
                                                    OTRL_INSTAG_BEST, arg, NULL, &msg,
                                                    OTRL_FRAGMENT_SEND_ALL, NULL, NULL, NULL);
            if (err) out("ERROR", "sending failed");
            if (msg) otrl_message_free(msg);
        } else if (!strcmp(line, "QUERY")) {
            char *q = otrl_proto_default_query_msg(ACCOUNT, op_policy(NULL, NULL));
            out("WIRE", q);
            free(q);
        } else if (!strcmp(line, "DISCONNECT")) {
            otrl_message_disconnect(us, &ops, NULL, ACCOUNT, PROTOCOL, PEER, OTRL_INSTAG_BEST);
        } else if (!strcmp(line, "SMP")) {
            otrl_message_initiate_smp(us, &ops, NULL, context(), (const unsigned char *)arg,
                                      strlen(arg));
        } else if (!strcmp(line, "STATUS")) {
            ConnContext *c = context();
            char buf[64], f[41] = "-";
            if (c && c->active_fingerprint) hex(c->active_fingerprint->fingerprint, f);
            snprintf(buf, sizeof buf, "%d %s", c ? (int)c->msgstate : 0, f);
            out("STATE", buf);
        } else {
            out("ERROR", "unknown command");
        }
        out("OK", NULL);
    }
    otrl_userstate_free(us);
    return 0;
}
