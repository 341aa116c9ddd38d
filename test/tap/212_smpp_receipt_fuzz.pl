# 212_smpp_receipt_fuzz.pl — envoisms.smpp_parse_receipt (the parser the
# SMPP bind uses on every text receipt) fed well-formed receipts in the
# shapes SMSCs send, then every truncation, thousands of random mutations,
# random garbage and oversized fields: each input either parses or fails
# with "malformed SMPP delivery receipt" (SQLSTATE 22P02) and a detail, and
# the server never crashes.
use strict;
use warnings;

use EnvoismsTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = EnvoismsTest::node('smppfuzz');

sub sql { return $node->safe_psql('envoisms', $_[0]) }

my $full = 'id:0123456789 sub:001 dlvrd:001 submit date:2605251030 done date:2605251031 stat:DELIVRD err:000 text:Bonjour: a b';

# ---- the shapes SMSCs send
is(sql("SELECT concat_ws('|', id, sub, dlvrd, submit_date, done_date, stat, err, txt) FROM envoisms.smpp_parse_receipt('$full')"),
	'0123456789|1|1|2605251030|2605251031|DELIVRD|000|Bonjour: a b', 'the SMPP 3.4 appendix B form, text with a colon');
is(sql("SELECT id || ' ' || stat FROM envoisms.smpp_parse_receipt('ID:abc-1 Sub:1 DLVRD:0 Submit_Date:2605251030 STAT:undeliv ERR:0x1f')"),
	'abc-1 UNDELIV', 'keys in any case, submit_date with an underscore, stat upper-cased');
is(sql("SELECT id || ' ' || stat FROM envoisms.smpp_parse_receipt('stat:EXPIRED id:77')"), '77 EXPIRED',
	'fields in another order');
is(sql("SELECT coalesce(sub::text, 'null') || coalesce(txt, 'null') FROM envoisms.smpp_parse_receipt('id:1 stat:ACCEPTD')"),
	'nullnull', 'absent fields are NULL');
is(sql("SELECT envoisms.smpp_receipt_status(s) FROM unnest(ARRAY['DELIVRD','UNDELIV','REJECTD','DELETED','EXPIRED','ACCEPTD','ENROUTE','UNKNOWN','BOGUS']) s"),
	"delivered\nfailed\nfailed\nfailed\nexpired\nsent\nsent\nfailed\n", 'stat words map to our statuses (unknown words to NULL)');

# ---- each malformed input fails with its own sentence
my %bad = (
	''                                   => 'The receipt is empty.',
	'stat:DELIVRD'                       => 'The receipt has no "id:" value.',
	'id:1'                               => 'The receipt has no "stat:" value.',
	'id: stat:DELIVRD'                   => 'The receipt has no "id:" value.',
	'hello id:1 stat:DELIVRD'            => 'The receipt does not start with a field such as "id:".',
	'id:1 id:2 stat:DELIVRD'             => 'The receipt repeats a field.',
	'id:1 sub:x stat:DELIVRD'            => 'The receipt sub is not a number.',
	'id:1 dlvrd:-1 stat:DELIVRD'         => 'The receipt dlvrd is not a number.',
	'id:1 stat:DELIV3RD'                 => 'The receipt stat is longer than 7 characters.',
	'id:1 stat:DEL-RD'                   => 'The receipt stat is not a word such as DELIVRD.',
	'id:1 submit date:26-05 stat:DELIVRD' => 'The receipt submit date is not 1 to 16 digits.',
	('id:' . ('x' x 65) . ' stat:DELIVRD') => 'The receipt id is longer than 64 characters.',
	"id:a\tb stat:DELIVRD"               => 'The receipt id contains a blank or a control character.',
);
for my $input (sort keys %bad)
{
	my ($ret, $out, $err) = $node->psql('envoisms',
		"SELECT * FROM envoisms.smpp_parse_receipt(\$r\$$input\$r\$)", extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	like($err, qr/22P02: malformed SMPP delivery receipt.*DETAIL:\s+\Q$bad{$input}\E/s,
		"malformed: '" . substr($input, 0, 30) . "' → $bad{$input}");
}

# ---- fuzz: every truncation, random mutations and garbage, in one server call each
sql(q{CREATE FUNCTION fuzz_count(inputs text[], OUT parsed int, OUT refused int, OUT other text)
LANGUAGE plpgsql AS $$
DECLARE
    s text;
BEGIN
    parsed := 0; refused := 0;
    FOREACH s IN ARRAY inputs LOOP
        BEGIN
            PERFORM * FROM envoisms.smpp_parse_receipt(s);
            parsed := parsed + 1;
        EXCEPTION WHEN invalid_text_representation THEN
            refused := refused + 1;
        WHEN OTHERS THEN
            other := coalesce(other, SQLSTATE || ' ' || SQLERRM);
        END;
    END LOOP;
END $$});

my $truncations = sql("SELECT parsed || ' ' || refused || ' ' || coalesce(other, '-') FROM fuzz_count(
    ARRAY(SELECT left('$full', n) FROM generate_series(0, length('$full')) n))");
my ($p, $r, $o) = split ' ', $truncations, 3;
is($o, '-', 'every truncation either parses or is refused as malformed');
is($p + $r, length($full) + 1, 'all ' . (length($full) + 1) . ' truncations were tried');
cmp_ok($r, '>', 0, "short truncations are refused ($r of them)");

srand(20261125);
my @inputs;
my @alphabet = (map { chr } 32 .. 126, 9, 10, 13);
for (1 .. 3000)
{
	my $s = $full;
	my $edits = 1 + int(rand(6));
	for (1 .. $edits)
	{
		my $pos = int(rand(length $s));
		my $what = int(rand(3));
		if ($what == 0) { substr($s, $pos, 1) = $alphabet[ rand @alphabet ] }
		elsif ($what == 1) { substr($s, $pos, 1 + int(rand(5))) = '' }
		else { substr($s, $pos, 0) = join('', map { $alphabet[ rand @alphabet ] } 1 .. 1 + int(rand(8))) }
	}
	push @inputs, $s;
}
push @inputs, join('', map { $alphabet[ rand @alphabet ] } 1 .. int(rand(300))) for 1 .. 1000;
push @inputs, 'id:' . ('9' x 5000) . ' stat:DELIVRD', 'id:1 stat:DELIVRD text:' . ('é' x 400),
  'id:1 stat:DELIVRD ' . ('sub:1 ' x 200), ('id:' x 1000), 'text:id:1 stat:DELIVRD', ':::::', 'id:1 stat:';
open(my $f, '>', "$PostgreSQL::Test::Utils::tmp_check/fuzz.txt") or die;
for my $s (@inputs)
{
	(my $e = $s) =~ s/([\\\t\n\r])/{ "\\" => '\\\\', "\t" => '\t', "\n" => '\n', "\r" => '\r' }->{$1}/ge;
	print $f "$e\n";
}
close $f;
sql("CREATE TABLE fuzz_inputs (s text); COPY fuzz_inputs FROM '$PostgreSQL::Test::Utils::tmp_check/fuzz.txt'");
my $fuzz = sql("SELECT parsed || ' ' || refused || ' ' || coalesce(other, '-') FROM fuzz_count(ARRAY(SELECT s FROM fuzz_inputs))");
($p, $r, $o) = split ' ', $fuzz, 3;
is($o, '-', 'every mutated or random input either parses or is refused as malformed');
is($p + $r, scalar(@inputs), scalar(@inputs) . " inputs tried ($p parsed, $r refused)");
is(sql("SELECT length(txt) FROM envoisms.smpp_parse_receipt('id:1 stat:DELIVRD text:' || repeat('é', 400))"), '127',
	'a long text is cut at 255 bytes, on a character boundary');
is(sql('SELECT 1'), '1', 'the server is still up');
unlike(slurp_file($node->logfile), qr/terminated by signal/, 'no backend crashed');
done_testing();
