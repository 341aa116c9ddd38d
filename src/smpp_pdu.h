/*
 * smpp_pdu.h — SMPP 3.4 PDUs and SMS text encodings: the codec of the
 * SMPP bind worker (worker_smpp_bind.c), not a dispatcher carrier. PDUs
 * are packed and unpacked by libsmpp34; this layer only fills its
 * structures, checks its return codes and frames the byte stream (the
 * 16-byte header tells how long a PDU is). Text encoding (GSM 03.38
 * septets, packed or not, UCS-2 big-endian, user-data headers) is ours:
 * libsmpp34 carries bytes.
 */
#ifndef ENVOISMS_SMPP_PDU_H
#define ENVOISMS_SMPP_PDU_H

#include <stdbool.h>
#include <stdint.h>

#define SMPP_HEADER_LEN 16
#define SMPP_PDU_MAX 4096			/* largest PDU we build or accept */
#define SMPP_SHORT_MESSAGE_MAX 253	/* libsmpp34 refuses sm_length >= 254 */
#define SMPP_PAYLOAD_MAX 1024		/* libsmpp34's largest TLV value */
#define SMPP_ADDRESS_MAX 20
#define SMPP_MESSAGE_ID_MAX 64

/* Command ids and statuses we act on (the values of SMPP 3.4 section 5). */
#define SMPP_GENERIC_NACK 0x80000000u
#define SMPP_BIND_TRANSCEIVER 0x00000009u
#define SMPP_BIND_TRANSCEIVER_RESP 0x80000009u
#define SMPP_SUBMIT_SM 0x00000004u
#define SMPP_SUBMIT_SM_RESP 0x80000004u
#define SMPP_DELIVER_SM 0x00000005u
#define SMPP_DELIVER_SM_RESP 0x80000005u
#define SMPP_UNBIND 0x00000006u
#define SMPP_UNBIND_RESP 0x80000006u
#define SMPP_ENQUIRE_LINK 0x00000015u
#define SMPP_ENQUIRE_LINK_RESP 0x80000015u
#define SMPP_RESPONSE_BIT 0x80000000u

#define SMPP_ESME_ROK 0x00
#define SMPP_ESME_RINVCMDLEN 0x02
#define SMPP_ESME_RINVCMDID 0x03
#define SMPP_ESME_RSYSERR 0x08
#define SMPP_ESME_RMSGQFUL 0x14
#define SMPP_ESME_RTHROTTLED 0x58
#define SMPP_ESME_RX_T_APPN 0x64
#define SMPP_ESME_RX_P_APPN 0x65

#define SMPP_ESM_RECEIPT_MASK 0x3C	/* message type bits of esm_class */
#define SMPP_ESM_DELIVERY_RECEIPT 0x04
#define SMPP_ESM_UDHI 0x40

#define SMPP_DC_DEFAULT 0			/* GSM 03.38 */
#define SMPP_DC_IA5 1
#define SMPP_DC_LATIN1 3
#define SMPP_DC_UCS2 8

typedef struct SmppHeader
{
	uint32_t	length;
	uint32_t	command_id;
	uint32_t	status;
	uint32_t	sequence;
} SmppHeader;

/* One submit_sm to build. */
typedef struct SmppSubmit
{
	uint32_t	sequence;
	const char *system_type;	/* service_type, "" for the default */
	const char *source;
	uint8_t		source_ton;
	uint8_t		source_npi;
	const char *destination;	/* international digits, no '+' */
	uint8_t		esm_class;
	uint8_t		data_coding;
	uint8_t		registered_delivery;
	const char *validity;		/* "" or the absolute SMPP time */
	const uint8_t *short_message;
	int			sm_length;
	const uint8_t *payload;		/* message_payload TLV when payload_length > 0 */
	int			payload_length;
} SmppSubmit;

/* What we read from a deliver_sm. */
typedef struct SmppDeliver
{
	char		source[SMPP_ADDRESS_MAX + 2];	/* with '+' when international */
	char		destination[SMPP_ADDRESS_MAX + 2];
	uint8_t		esm_class;
	uint8_t		data_coding;
	uint8_t		message[SMPP_PAYLOAD_MAX];	/* short_message or message_payload */
	int			message_length;
	char		receipted_id[SMPP_MESSAGE_ID_MAX + 1];	/* "" when absent */
	int			message_state;	/* message_state TLV, -1 when absent */
	char		network_error[16];	/* network_error_code TLV as text, "" when absent */
} SmppDeliver;

/* An encoded part of a message: the short_message bytes and its esm_class. */
typedef struct SmppSegment
{
	uint8_t		data[SMPP_SHORT_MESSAGE_MAX];
	int			length;
	uint8_t		esm_class;
} SmppSegment;

/* The SMPP name of a command_status ("ESME_RTHROTTLED"), else "SMPP_0x…". */
extern void SmppStatusName(uint32_t status, char *buf, int size);

/* ---- framing and PDUs (all return the PDU length, or -1 and *error) */
extern void SmppReadHeader(const uint8_t *buf, SmppHeader *header);
extern int	SmppBuildBindTransceiver(uint8_t *buf, int size, uint32_t sequence,
									 const char *system_id, const char *password,
									 const char *system_type, const char **error);
extern int	SmppBuildEmpty(uint8_t *buf, int size, uint32_t command_id,
						   uint32_t status, uint32_t sequence, const char **error);
extern int	SmppBuildDeliverResp(uint8_t *buf, int size, uint32_t status,
								 uint32_t sequence, const char **error);
extern int	SmppBuildSubmit(uint8_t *buf, int size, const SmppSubmit *submit,
							const char **error);

/*
 * Unpack a received PDU (buf must be followed by one readable NUL byte,
 * as the worker's receive buffer is). True on success.
 */
extern bool SmppParseSubmitResp(const uint8_t *buf, int len, char *message_id,
								const char **error);
extern bool SmppParseDeliver(const uint8_t *buf, int len, SmppDeliver *deliver,
							 const char **error);

/* ---- text encodings */

/*
 * Encode the UTF-8 parts of one message (as envoisms.sms_split cut them)
 * into segments: GSM 03.38 septets one per octet or packed, or UCS-2
 * big-endian; with a concatenation UDH (IE 0x00, reference ref) when there
 * is more than one part. Returns false and *error when a part does not fit
 * or a GSM character has no GSM form (encoding and split disagree).
 */
extern bool SmppEncodeParts(char **parts, int nparts, bool ucs2, bool gsm_packed,
							uint8_t ref, SmppSegment *segments, const char **error);

/*
 * Encode a whole UTF-8 text into out (message_payload); returns the byte
 * length, or -1 when it does not fit in outsize or has no GSM form.
 */
extern int	SmppEncodeText(const char *utf8, int len, bool ucs2, bool gsm_packed,
						   uint8_t *out, int outsize);

/*
 * Decode a received short message to a palloc'd UTF-8 string (data_coding
 * 0 GSM septets, 1 ASCII, 3 Latin-1, 8 UCS-2; anything else as Latin-1),
 * skipping a UDH when udhi is set; ref, total and seq get the concatenation
 * IE (total 0 when none).
 */
extern char *SmppDecodeText(const uint8_t *data, int len, int data_coding,
							bool udhi, bool gsm_packed,
							int *ref, int *total, int *seq);

#endif							/* ENVOISMS_SMPP_PDU_H */
