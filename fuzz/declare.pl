#!/usr/bin/perl
# fuzz/declare.pl LIBRARY FUNCTION... < src/sql/*.sql — the SQL that declares
# the named envoisms C functions exactly as the extension's install script
# does, but pointing at LIBRARY (the fuzz build), plus fuzz_main(). A blank
# line ends each statement, as postgres --single -j reads them.
use strict;
use warnings;

my ($library, @functions) = @ARGV;
my $sql = do { local $/; <STDIN> };
print "CREATE SCHEMA envoisms;\n\n";
for my $f (@functions)
{
	my @found = $sql =~ /(CREATE FUNCTION envoisms\.\Q$f\E\(.*?;)/sg;
	die "declare.pl: no C declaration of envoisms.$f in src/sql\n"
	  unless @found && $found[-1] =~ /'MODULE_PATHNAME'/;
	(my $declaration = $found[-1]) =~ s/'MODULE_PATHNAME'/'$library'/;
	print "$declaration\n\n";
}
print "CREATE FUNCTION fuzz_main(target text, args text[]) RETURNS int\n"
  . "AS '$library', 'fuzz_main' LANGUAGE C STRICT;\n\n";
