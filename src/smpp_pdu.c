/*
 * smpp_pdu.c — SMPP 3.4 PDUs (through libsmpp34) and SMS text encodings,
 * the codec of the SMPP bind worker (worker_smpp_bind.c).
 *
 * PDUs: every PDU we send is packed by smpp34_pack2 and the replies to ours
 * are unpacked by smpp34_unpack2; we read the 16-byte header ourselves, to
 * frame the stream and to answer PDUs libsmpp34 refuses (an unknown command
 * or a vendor status code makes it fail, yet the status is what we need),
 * and the deliver_sm an SMSC sends unprompted, whose content libsmpp34
 * cannot unpack safely (SmppParseDeliver says why).
 * libsmpp34 keeps its error text in a global buffer and is not thread-safe,
 * which is fine: one bind per process.
 *
 * Text: GSM 03.38 (data_coding 0) is sent one septet per octet by default,
 * as most SMSCs expect over SMPP, or packed 7-bit when the carrier says so
 * (gsm_packing), with the fill bits that align the septets after a UDH.
 * UCS-2 (data_coding 8) is UTF-16 big-endian, a character outside the BMP
 * being a surrogate pair — exactly how segments.c counts it. The parts come
 * from envoisms.sms_split (the same C walk as billing); we only encode them,
 * and a part that does not fit is an error, never a silent cut.
 */
#include "envoisms.h"

#include <arpa/inet.h>

#include <libsmpp34/smpp34.h>
#include <libsmpp34/smpp34_structs.h>
#include <libsmpp34/smpp34_params.h>

#include "mb/pg_wchar.h"

#include "smpp_pdu.h"

#define UDH_CONCAT_LEN 6		/* UDHL 05, IE 00, IEL 03, ref, total, seq */
#define GSM_ESCAPE 0x1B
#define GSM_SINGLE_SEPTETS 160
#define GSM_MULTI_SEPTETS 153
#define UCS2_SINGLE_OCTETS 140

/* optional parameters a deliver_sm may carry (SMPP 3.4 defines about 30) */
#define SMPP_DELIVER_MAX_TLVS 64

#define GSM_CR 0x0D				/* carriage return, the padding septet */

/* GSM 03.38 basic table: septet → Unicode code point. */
static const uint16_t gsm_basic[128] = {
	0x0040, 0x00A3, 0x0024, 0x00A5, 0x00E8, 0x00E9, 0x00F9, 0x00EC,
	0x00F2, 0x00C7, 0x000A, 0x00D8, 0x00F8, 0x000D, 0x00C5, 0x00E5,
	0x0394, 0x005F, 0x03A6, 0x0393, 0x039B, 0x03A9, 0x03A0, 0x03A8,
	0x03A3, 0x0398, 0x039E, 0x00A0, 0x00C6, 0x00E6, 0x00DF, 0x00C9,
	0x0020, 0x0021, 0x0022, 0x0023, 0x00A4, 0x0025, 0x0026, 0x0027,
	0x0028, 0x0029, 0x002A, 0x002B, 0x002C, 0x002D, 0x002E, 0x002F,
	0x0030, 0x0031, 0x0032, 0x0033, 0x0034, 0x0035, 0x0036, 0x0037,
	0x0038, 0x0039, 0x003A, 0x003B, 0x003C, 0x003D, 0x003E, 0x003F,
	0x00A1, 0x0041, 0x0042, 0x0043, 0x0044, 0x0045, 0x0046, 0x0047,
	0x0048, 0x0049, 0x004A, 0x004B, 0x004C, 0x004D, 0x004E, 0x004F,
	0x0050, 0x0051, 0x0052, 0x0053, 0x0054, 0x0055, 0x0056, 0x0057,
	0x0058, 0x0059, 0x005A, 0x00C4, 0x00D6, 0x00D1, 0x00DC, 0x00A7,
	0x00BF, 0x0061, 0x0062, 0x0063, 0x0064, 0x0065, 0x0066, 0x0067,
	0x0068, 0x0069, 0x006A, 0x006B, 0x006C, 0x006D, 0x006E, 0x006F,
	0x0070, 0x0071, 0x0072, 0x0073, 0x0074, 0x0075, 0x0076, 0x0077,
	0x0078, 0x0079, 0x007A, 0x00E4, 0x00F6, 0x00F1, 0x00FC, 0x00E0,
};

/* GSM 03.38 extension table (after ESC): septet and code point. */
static const struct
{
	uint8_t		septet;
	uint16_t	code;
}			gsm_extension[] = {
	{0x0A, 0x000C}, {0x14, 0x005E}, {0x28, 0x007B}, {0x29, 0x007D},
	{0x2F, 0x005C}, {0x3C, 0x005B}, {0x3D, 0x007E}, {0x3E, 0x005D},
	{0x40, 0x007C}, {0x65, 0x20AC},
};

#define GSM_EXTENSION_COUNT (sizeof(gsm_extension) / sizeof(gsm_extension[0]))

/*
 * Septets of one code point into out (1 or 2); 0 when it has no GSM form.
 * 0x1B (our NBSP placeholder) is the escape and never a character.
 */
static int
gsm_septets(pg_wchar c, uint8_t *out)
{
	int			i;

	for (i = 0; i < 128; i++)
		if (gsm_basic[i] == c && i != GSM_ESCAPE)
		{
			out[0] = (uint8_t) i;
			return 1;
		}
	for (i = 0; i < (int) GSM_EXTENSION_COUNT; i++)
		if (gsm_extension[i].code == c)
		{
			out[0] = GSM_ESCAPE;
			out[1] = gsm_extension[i].septet;
			return 2;
		}
	return 0;
}

/* Unpacked septets of a UTF-8 text into out; -1 when no GSM form or no room. */
static int
gsm_encode(const char *utf8, int len, uint8_t *out, int outsize)
{
	const unsigned char *s = (const unsigned char *) utf8;
	int			pos = 0;
	int			n = 0;

	while (pos < len)
	{
		int			l = pg_utf_mblen(s + pos);
		uint8_t		sept[2];
		int			k;

		if (l < 1 || pos + l > len)
			return -1;
		k = gsm_septets(utf8_to_unicode(s + pos), sept);
		if (k == 0 || n + k > outsize)
			return -1;
		memcpy(out + n, sept, k);
		n += k;
		pos += l;
	}
	return n;
}

/* UTF-16BE of a UTF-8 text into out; -1 when no room. */
static int
ucs2_encode(const char *utf8, int len, uint8_t *out, int outsize)
{
	const unsigned char *s = (const unsigned char *) utf8;
	int			pos = 0;
	int			n = 0;

	while (pos < len)
	{
		int			l = pg_utf_mblen(s + pos);
		pg_wchar	c;

		if (l < 1 || pos + l > len)
			return -1;
		c = utf8_to_unicode(s + pos);
		pos += l;
		if (c > 0xFFFF)
		{
			uint32_t	v = c - 0x10000;
			uint16_t	hi = 0xD800 | (v >> 10);
			uint16_t	lo = 0xDC00 | (v & 0x3FF);

			if (n + 4 > outsize)
				return -1;
			out[n++] = hi >> 8;
			out[n++] = hi & 0xFF;
			out[n++] = lo >> 8;
			out[n++] = lo & 0xFF;
		}
		else
		{
			if (n + 2 > outsize)
				return -1;
			out[n++] = c >> 8;
			out[n++] = c & 0xFF;
		}
	}
	return n;
}

/*
 * Pack septets 7-bit after `header` octets already in out (the UDH), with
 * the fill bits that start the first septet on a septet boundary. When 7
 * bits are left over in the last octet they hold a CR, as 3GPP 23.038 says
 * (seven zero bits would read as a trailing '@': an SMPP short message
 * counts octets, not septets). Returns the total octet length, or -1 when it
 * does not fit.
 */
static int
gsm_pack(const uint8_t *septets, int count, int header, uint8_t *out, int outsize)
{
	int			bit = header * 8;
	int			total;
	int			i;

	if (header > 0)
		bit += (7 - (bit % 7)) % 7;
	total = (bit + count * 7 + 7) / 8;
	if (total > outsize)
		return -1;
	memset(out + header, 0, total - header);
	for (i = 0; i < count; i++)
	{
		int			b;

		for (b = 0; b < 7; b++, bit++)
			if (septets[i] & (1 << b))
				out[bit / 8] |= (uint8_t) (1 << (bit % 8));
	}
	if (total * 8 - bit == 7)
		out[total - 1] |= (uint8_t) (GSM_CR << 1);
	return total;
}

bool
SmppEncodeParts(char **parts, int nparts, bool ucs2, bool gsm_packed,
				uint8_t ref, SmppSegment *segments, const char **error)
{
	int			i;

	for (i = 0; i < nparts; i++)
	{
		SmppSegment *seg = &segments[i];
		int			header = (nparts > 1) ? UDH_CONCAT_LEN : 0;
		uint8_t		units[SMPP_SHORT_MESSAGE_MAX];
		int			n;

		if (header)
		{
			seg->data[0] = 0x05;	/* UDHL */
			seg->data[1] = 0x00;	/* IE: concatenated SMS, 8-bit reference */
			seg->data[2] = 0x03;
			seg->data[3] = ref;
			seg->data[4] = (uint8_t) nparts;
			seg->data[5] = (uint8_t) (i + 1);
		}
		seg->esm_class = header ? SMPP_ESM_UDHI : 0;
		if (ucs2)
		{
			n = ucs2_encode(parts[i], strlen(parts[i]), units, sizeof(units));
			if (n < 0 || header + n > UCS2_SINGLE_OCTETS)
			{
				*error = "a UCS-2 part is longer than one SMS";
				return false;
			}
			memcpy(seg->data + header, units, n);
			seg->length = header + n;
			continue;
		}
		n = gsm_encode(parts[i], strlen(parts[i]), units, sizeof(units));
		if (n < 0)
		{
			*error = "a part has a character without a GSM 03.38 form";
			return false;
		}
		if (n > (header ? GSM_MULTI_SEPTETS : GSM_SINGLE_SEPTETS))
		{
			*error = "a GSM part is longer than one SMS";
			return false;
		}
		if (gsm_packed)
			seg->length = gsm_pack(units, n, header, seg->data, sizeof(seg->data));
		else
		{
			memcpy(seg->data + header, units, n);
			seg->length = header + n;
		}
		if (seg->length < 0)
		{
			*error = "a packed GSM part does not fit in a short message";
			return false;
		}
	}
	*error = NULL;
	return true;
}

int
SmppEncodeText(const char *utf8, int len, bool ucs2, bool gsm_packed,
			   uint8_t *out, int outsize)
{
	uint8_t		units[SMPP_PAYLOAD_MAX * 2];
	int			n;

	if (ucs2)
		return ucs2_encode(utf8, len, out, outsize);
	n = gsm_encode(utf8, len, units, sizeof(units));
	if (n < 0)
		return -1;
	if (gsm_packed)
		return gsm_pack(units, n, 0, out, outsize);
	if (n > outsize)
		return -1;
	memcpy(out, units, n);
	return n;
}

/* Append the UTF-8 of code point c to buf. */
static void
append_code_point(StringInfo buf, pg_wchar c)
{
	unsigned char tmp[8];

	if (c == 0 || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
		c = 0xFFFD;
	unicode_to_utf8(c, tmp);
	appendBinaryStringInfo(buf, (char *) tmp, pg_utf_mblen(tmp));
}

char *
SmppDecodeText(const uint8_t *data, int len, int data_coding, bool udhi,
			   bool gsm_packed, int *ref, int *total, int *seq)
{
	StringInfoData buf;
	uint8_t		septets[SMPP_PAYLOAD_MAX * 8 / 7 + 1];
	int			start = 0;
	int			i;

	*ref = *total = *seq = 0;
	initStringInfo(&buf);
	if (udhi && len > 0)
	{
		int			udhl = data[0];
		int			p = 1;

		if (1 + udhl > len)
			return buf.data;	/* a broken header: nothing to read */
		while (p + 2 <= 1 + udhl)
		{
			int			ie = data[p];
			int			iel = data[p + 1];

			if (p + 2 + iel > 1 + udhl)
				break;
			if (ie == 0x00 && iel == 3)
			{
				*ref = data[p + 2];
				*total = data[p + 3];
				*seq = data[p + 4];
			}
			else if (ie == 0x08 && iel == 4)
			{
				*ref = (data[p + 2] << 8) | data[p + 3];
				*total = data[p + 4];
				*seq = data[p + 5];
			}
			p += 2 + iel;
		}
		start = 1 + udhl;
	}

	if (data_coding == SMPP_DC_UCS2)
	{
		for (i = start; i + 1 < len; i += 2)
		{
			pg_wchar	c = (data[i] << 8) | data[i + 1];

			if (c >= 0xD800 && c <= 0xDBFF && i + 3 < len)
			{
				pg_wchar	lo = (data[i + 2] << 8) | data[i + 3];

				if (lo >= 0xDC00 && lo <= 0xDFFF)
				{
					c = 0x10000 + ((c - 0xD800) << 10) + (lo - 0xDC00);
					i += 2;
				}
			}
			append_code_point(&buf, c);
		}
		return buf.data;
	}
	if (data_coding == SMPP_DC_DEFAULT)
	{
		int			count = 0;

		if (gsm_packed)
		{
			int			bit = start * 8;

			int			first_bit;

			if (start > 0)
				bit += (7 - (bit % 7)) % 7;
			first_bit = bit;
			while (bit + 7 <= len * 8 && count < (int) sizeof(septets))
			{
				int			v = 0;
				int			b;

				for (b = 0; b < 7; b++, bit++)
					if (data[bit / 8] & (1 << (bit % 8)))
						v |= 1 << b;
				septets[count++] = v;
			}
			/* a CR in the last 7 bits of the last octet is the padding of gsm_pack */
			if (count > 0 && (len * 8 - first_bit) % 7 == 0 && septets[count - 1] == GSM_CR)
				count--;
		}
		else
			for (i = start; i < len && count < (int) sizeof(septets); i++)
				septets[count++] = data[i] & 0x7F;
		for (i = 0; i < count; i++)
		{
			if (septets[i] == GSM_ESCAPE && i + 1 < count)
			{
				int			k;
				pg_wchar	c = 0x00A0;	/* unknown escape: a space */

				for (k = 0; k < (int) GSM_EXTENSION_COUNT; k++)
					if (gsm_extension[k].septet == septets[i + 1])
						c = gsm_extension[k].code;
				append_code_point(&buf, c);
				i++;
			}
			else
				append_code_point(&buf, gsm_basic[septets[i]]);
		}
		return buf.data;
	}
	/* IA5, Latin-1, and anything we do not know: one octet, one character. */
	for (i = start; i < len; i++)
		append_code_point(&buf, (data_coding == SMPP_DC_IA5) ? (data[i] & 0x7F) : data[i]);
	return buf.data;
}

/* ---- PDUs */

void
SmppReadHeader(const uint8_t *buf, SmppHeader *h)
{
	uint32_t	v[4];

	memcpy(v, buf, sizeof(v));
	h->length = ntohl(v[0]);
	h->command_id = ntohl(v[1]);
	h->status = ntohl(v[2]);
	h->sequence = ntohl(v[3]);
}

void
SmppStatusName(uint32_t status, char *buf, int size)
{
	char		name[SMALL_BUFF];

	str_command_status(status, name);
	if (name[0])
		snprintf(buf, size, "%s", name);
	else
		snprintf(buf, size, "SMPP_0x%08X", status);
}

/* Pack any libsmpp34 PDU structure; returns its length or -1 and *error. */
static int
pack_pdu(uint8_t *buf, int size, void *pdu, const char **error)
{
	int			len = 0;

	if (smpp34_pack2(buf, size, &len, pdu) != 0)
	{
		*error = smpp34_strerror;
		return -1;
	}
	*error = NULL;
	return len;
}

/* Copy a C string into a fixed libsmpp34 field; false when too long. */
static bool
set_field(uint8_t *field, int size, const char *value)
{
	size_t		len = value ? strlen(value) : 0;

	if (len >= (size_t) size)
		return false;
	memcpy(field, value ? value : "", len);
	field[len] = '\0';
	return true;
}

int
SmppBuildBindTransceiver(uint8_t *buf, int size, uint32_t sequence,
						 const char *system_id, const char *password,
						 const char *system_type, const char **error)
{
	bind_transceiver_t pdu;

	memset(&pdu, 0, sizeof(pdu));
	pdu.command_id = BIND_TRANSCEIVER;
	pdu.sequence_number = sequence;
	pdu.interface_version = SMPP_VERSION;
	pdu.addr_ton = TON_Unknown;
	pdu.addr_npi = NPI_Unknown;
	if (!set_field(pdu.system_id, sizeof(pdu.system_id), system_id) ||
		!set_field(pdu.password, sizeof(pdu.password), password) ||
		!set_field(pdu.system_type, sizeof(pdu.system_type), system_type))
	{
		*error = "system_id (15), password (8) or system_type (12) is too long";
		return -1;
	}
	return pack_pdu(buf, size, &pdu, error);
}

int
SmppBuildEmpty(uint8_t *buf, int size, uint32_t command_id, uint32_t status,
			   uint32_t sequence, const char **error)
{
	generic_nack_t pdu;		/* every header-only PDU has this layout */

	memset(&pdu, 0, sizeof(pdu));
	pdu.command_id = command_id;
	pdu.command_status = status;
	pdu.sequence_number = sequence;
	return pack_pdu(buf, size, &pdu, error);
}

int
SmppBuildDeliverResp(uint8_t *buf, int size, uint32_t status, uint32_t sequence,
					 const char **error)
{
	deliver_sm_resp_t pdu;

	memset(&pdu, 0, sizeof(pdu));
	pdu.command_id = DELIVER_SM_RESP;
	pdu.command_status = status;
	pdu.sequence_number = sequence;
	return pack_pdu(buf, size, &pdu, error);
}

int
SmppBuildSubmit(uint8_t *buf, int size, const SmppSubmit *s, const char **error)
{
	submit_sm_t pdu;
	int			len;

	memset(&pdu, 0, sizeof(pdu));
	pdu.command_id = SUBMIT_SM;
	pdu.sequence_number = s->sequence;
	pdu.source_addr_ton = s->source_ton;
	pdu.source_addr_npi = s->source_npi;
	pdu.dest_addr_ton = TON_International;
	pdu.dest_addr_npi = NPI_ISDN_E163_E164;
	pdu.esm_class = s->esm_class;
	pdu.registered_delivery = s->registered_delivery;
	pdu.data_coding = s->data_coding;
	if (!set_field(pdu.service_type, sizeof(pdu.service_type), s->system_type) ||
		!set_field(pdu.source_addr, sizeof(pdu.source_addr), s->source) ||
		!set_field(pdu.destination_addr, sizeof(pdu.destination_addr), s->destination) ||
		!set_field(pdu.validity_period, sizeof(pdu.validity_period), s->validity))
	{
		*error = "an address, service_type or validity period is too long for SMPP";
		return -1;
	}
	if (s->sm_length < 0 || s->sm_length > SMPP_SHORT_MESSAGE_MAX)
	{
		*error = "short message longer than 253 octets";
		return -1;
	}
	pdu.sm_length = (uint8_t) s->sm_length;
	if (s->sm_length > 0)
		memcpy(pdu.short_message, s->short_message, s->sm_length);
	if (s->payload_length > 0)
	{
		tlv_t		tlv;

		if (s->payload_length > SMPP_PAYLOAD_MAX)
		{
			*error = "message_payload longer than 1024 octets";
			return -1;
		}
		memset(&tlv, 0, sizeof(tlv));
		tlv.tag = TLVID_message_payload;
		tlv.length = (uint16_t) s->payload_length;
		memcpy(tlv.value.octet, s->payload, s->payload_length);
		if (build_tlv(&pdu.tlv, &tlv) != 0)
		{
			*error = "out of memory";
			return -1;
		}
	}
	len = pack_pdu(buf, size, &pdu, error);
	destroy_tlv(pdu.tlv);
	return len;
}

bool
SmppParseSubmitResp(const uint8_t *buf, int len, char *message_id, const char **error)
{
	submit_sm_resp_t pdu;

	memset(&pdu, 0, sizeof(pdu));
	message_id[0] = '\0';
	if (smpp34_unpack2(&pdu, buf, len) != 0)
	{
		*error = smpp34_strerror;
		return false;
	}
	strlcpy(message_id, (char *) pdu.message_id, SMPP_MESSAGE_ID_MAX + 1);
	*error = NULL;
	return true;
}

/* The address as we store it: '+' before an international number. */
static void
address_text(char *out, int ton, const uint8_t *addr)
{
	const char *a = (const char *) addr;

	if (ton == TON_International && a[0] != '+' && a[0] != '\0')
		snprintf(out, SMPP_ADDRESS_MAX + 2, "+%s", a);
	else
		snprintf(out, SMPP_ADDRESS_MAX + 2, "%s", a);
}

/* A C-octet string of at most `max` octets with its NUL at *pos: where it starts, and *pos past it; NULL when there is no NUL. */
static const char *
read_c_octets(const uint8_t *buf, int len, int *pos, int max)
{
	const char *start = (const char *) buf + *pos;

	for (int i = 0; i < max && *pos + i < len; i++)
		if (buf[*pos + i] == '\0')
		{
			*pos += i + 1;
			return start;
		}
	return NULL;
}

/*
 * Read a deliver_sm ourselves rather than through smpp34_unpack2: its
 * unpacker logs every field into a fixed 2048-byte global buffer without
 * bound, and a PDU an SMSC (or anyone on the path) makes up overflows it;
 * it also leaks its list of optional parameters when the last one is cut
 * short. Reading the SMPP 3.4 fields in order is all it did for us here. A
 * PDU that is not framed exactly (a string without its NUL, a field past
 * the end, optional parameters that do not end where the PDU does, more
 * than SMPP_DELIVER_MAX_TLVS of them) is refused.
 */
bool
SmppParseDeliver(const uint8_t *buf, int len, SmppDeliver *d, const char **error)
{
	int			pos = 16;		/* after the header */
	int			tlvs = 0;
	const char *source;
	const char *destination;
	uint8_t		source_ton,
				destination_ton,
				sm_length;

	memset(d, 0, sizeof(*d));
	d->message_state = -1;
	*error = "malformed deliver_sm (a field past its end, or too many optional parameters)";
	if (read_c_octets(buf, len, &pos, 6) == NULL || pos + 2 > len)	/* service_type */
		return false;
	source_ton = buf[pos];
	pos += 2;					/* source_addr_ton, source_addr_npi */
	if ((source = read_c_octets(buf, len, &pos, SMPP_ADDRESS_MAX + 1)) == NULL || pos + 2 > len)
		return false;
	destination_ton = buf[pos];
	pos += 2;					/* dest_addr_ton, dest_addr_npi */
	if ((destination = read_c_octets(buf, len, &pos, SMPP_ADDRESS_MAX + 1)) == NULL || pos + 3 > len)
		return false;
	d->esm_class = buf[pos];
	pos += 3;					/* esm_class, protocol_id, priority_flag */
	if (read_c_octets(buf, len, &pos, 17) == NULL ||	/* schedule_delivery_time */
		read_c_octets(buf, len, &pos, 17) == NULL ||	/* validity_period */
		pos + 5 > len)
		return false;
	d->data_coding = buf[pos + 2];	/* after registered_delivery, replace_if_present */
	sm_length = buf[pos + 4];	/* after sm_default_msg_id */
	pos += 5;
	if (pos + sm_length > len || sm_length > SMPP_SHORT_MESSAGE_MAX)
		return false;
	memcpy(d->message, buf + pos, sm_length);
	d->message_length = sm_length;
	pos += sm_length;
	while (pos < len)
	{
		int			tag,
					length;
		const uint8_t *value;

		if (pos + 4 > len || ++tlvs > SMPP_DELIVER_MAX_TLVS)
			return false;
		tag = (buf[pos] << 8) | buf[pos + 1];
		length = (buf[pos + 2] << 8) | buf[pos + 3];
		value = buf + pos + 4;
		pos += 4 + length;
		if (pos > len)
			return false;
		switch (tag)
		{
			case TLVID_receipted_message_id:
				{
					int			n = Min(length, SMPP_MESSAGE_ID_MAX);

					memcpy(d->receipted_id, value, n);
					d->receipted_id[n] = '\0';	/* the C-octet's own NUL ends it earlier */
					break;
				}
			case TLVID_message_state:
				if (length == 1)
					d->message_state = value[0];
				break;
			case TLVID_network_error_code:
				if (length == 3)
					snprintf(d->network_error, sizeof(d->network_error), "%u:%u",
							 value[0], (value[1] << 8) | value[2]);
				break;
			case TLVID_message_payload:
				if (length <= SMPP_PAYLOAD_MAX)
				{
					memcpy(d->message, value, length);
					d->message_length = length;
				}
				break;
		}
	}
	address_text(d->source, source_ton, (const uint8_t *) source);
	address_text(d->destination, destination_ton, (const uint8_t *) destination);
	*error = NULL;
	return true;
}
