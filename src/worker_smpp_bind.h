/*
 * worker_smpp_bind.h — what the two halves of an SMPP bind worker share:
 * worker_smpp_bind.c (the link, the window, the loop) and
 * worker_smpp_record.c (its transactions: settings, claim, outcomes).
 * Private to those two files. One bind per process, so the state is
 * process-global.
 */
#ifndef ENVOISMS_WORKER_SMPP_BIND_H
#define ENVOISMS_WORKER_SMPP_BIND_H

#include "envoisms.h"

#include "datatype/timestamp.h"
#include "lib/ilist.h"
#include "nodes/pg_list.h"

#include "smpp_pdu.h"
#include "worker_smpp.h"

/* ---- settings (envoisms.smpp_carrier_settings) */

typedef struct Settings
{
	char		host[256];
	int			port;
	char		system_id[16];
	char		password[9];
	char		system_type[13];
	char		service_type[6];
	int			window;
	int			max_per_second;
	int			enquire_link_s;
	int			response_timeout_s;
	int			reconnect_min_s;
	int			reconnect_max_s;
	int			throttle_pause_ms;
	int			retry_delay_s;
	bool		payload;
	bool		gsm_packed;
	int			registered_delivery;
	int			batch;
} Settings;

/* ---- messages in memory */

typedef enum SegmentState
{
	SEG_WAITING,
	SEG_IN_FLIGHT,
	SEG_ACCEPTED,
} SegmentState;

typedef struct OutMessage
{
	dlist_node	node;
	char	   *account_id;
	char	   *message_id;
	char		source[SMPP_ADDRESS_MAX + 1];
	uint8_t		source_ton;
	uint8_t		source_npi;
	char		destination[SMPP_ADDRESS_MAX + 1];
	uint8_t		data_coding;
	char		validity[17];
	int			nsegs;
	SmppSegment *segs;
	uint8_t    *payload;		/* one message_payload PDU when not NULL */
	int			payload_length;
	SegmentState *state;
	char	  (*ids)[SMPP_MESSAGE_ID_MAX + 1];
	int			accepted;
	int			in_flight;
	int			transient_tries;
	int			throttle_tries;
	bool		done;			/* outcome recorded: later answers are ignored */
	TimestampTz not_before;		/* segment retry pause */
	TimestampTz claimed_at;
} OutMessage;

/* ---- what a pass records in the database */

typedef enum OutcomeKind
{
	OUT_SENT,
	OUT_RETRY,
	OUT_FAILED,
	OUT_RELEASE,
	OUT_RECEIPT,
	OUT_INBOUND,
	OUT_INBOUND_PART,
} OutcomeKind;

typedef struct Outcome
{
	OutcomeKind kind;
	char	   *account_id;
	char	   *message_id;
	char	  **ids;
	int			nids;
	char	   *code;			/* error code, or the receipt's stat */
	char	   *text;			/* error message, receipt err, or inbound body */
	int			delay_s;
	char	   *receipt_id;
	char	   *from;
	char	   *to;
	int			ref;
	int			total;
	int			seq;
	bool		answer;			/* a deliver_sm to answer after the commit */
	uint32_t	answer_sequence;
	bool		ok;
} Outcome;

typedef enum LinkState
{
	LINK_DOWN,
	LINK_CONNECTING,
	LINK_BINDING,
	LINK_BOUND,
	LINK_UNBINDING,
} LinkState;

/* ---- the bind's shared state (worker_smpp_bind.c) */
extern char smpp_carrier_id[SMPP_CARRIER_ID_LEN];
extern SmppBindSlot *smpp_slot;
extern Settings smpp_cfg;
extern List *smpp_outcomes;		/* this pass's, in smpp_pass_cxt */
extern MemoryContext smpp_pass_cxt;

/* Add a claimed message (row fields and its parts from sms_split). */
extern void SmppMessageAdd(char **fields, char **parts, int nparts, TimestampTz now);

/* Queue a deliver_sm_resp when the link is up. */
extern void SmppAnswerDeliver(uint32_t status, uint32_t sequence);

/* ---- transactions (worker_smpp_record.c); each is a short transaction of its own */

/* Read the carrier's settings into smpp_cfg; false when invalid or gone. */
extern bool SmppLoadSettings(void);

/* Release the leases a previous bind of this carrier left behind. */
extern void SmppReleaseLeases(void);

/* Claim due messages (SmppMessageAdd each); how many, or -1 on error. */
extern int	SmppClaim(TimestampTz now);

/* Record smpp_outcomes, then answer the deliver_sm they came from. */
extern void SmppRecordOutcomes(void);

#endif							/* ENVOISMS_WORKER_SMPP_BIND_H */
