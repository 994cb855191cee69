<?php
/*
 * Side-by-side summary of two run-tests.php result lists (-W files: "RESULT\ttest" per line), stock
 * PHP and PHP on zend_alloc. Prints the counts per result and every test whose result differs;
 * exits 1 if a test fails on the library but not on stock PHP.
 *
 *   php -n php/compare.php <stock.txt> <lib.txt> <label> [<stock tree> <lib tree>]
 *
 * Test paths are compared relative to their tree.
 */

if ($argc < 3) {
    fwrite(STDERR, "usage: compare.php <stock.txt> <lib.txt> [label]\n");
    exit(2);
}

/* Results that mean the test did not pass, as run-tests.php writes them with -W. */
const BAD = ['FAILED', 'BORKED', 'LEAKED', 'LEAKED&FAILED', 'WARNED', 'FAIL', 'BORK', 'LEAK', 'LEAK&FAIL', 'WARN'];

function results(string $file, string $tree): array
{
    $out = [];
    $prefix = rtrim($tree === '' ? '' : (realpath($tree) ?: $tree), '/') . '/';
    foreach (file($file, FILE_IGNORE_NEW_LINES | FILE_SKIP_EMPTY_LINES) ?: [] as $line) {
        [$result, $test] = explode("\t", $line, 2) + [1 => ''];
        if ($tree !== '' && str_starts_with($test, $prefix)) {
            $test = substr($test, strlen($prefix));
        }
        $out[$test] = $result;
    }
    ksort($out);
    return $out;
}

$stock = results($argv[1], $argv[4] ?? '');
$lib = results($argv[2], $argv[5] ?? '');
$label = $argv[3] ?? '';

$kinds = array_unique(array_merge(array_values($stock), array_values($lib)));
sort($kinds);
printf("\nPHP's test suite%s: %d tests\n\n", $label === '' ? '' : " ($label)", count($stock + $lib));
printf("| result | stock PHP | PHP on zend_alloc |\n| --- | ---: | ---: |\n");
$count = fn(array $r, string $k) => count(array_filter($r, fn($v) => $v === $k));
foreach ($kinds as $kind) {
    printf("| %s | %d | %d |\n", $kind, $count($stock, $kind), $count($lib, $kind));
}

$differ = [];
$regressions = 0;
foreach (array_keys($stock + $lib) as $test) {
    $s = $stock[$test] ?? 'MISSING';
    $l = $lib[$test] ?? 'MISSING';
    if ($s === $l) {
        continue;
    }
    $regression = (in_array($l, BAD, true) || $l === 'MISSING') && !in_array($s, BAD, true);
    $regressions += $regression;
    $differ[] = sprintf("  %-9s %-9s %s%s", $s, $l, $test, $regression ? '   <- fails only on the library' : '');
}

printf("\nTests whose result differs (stock, library): %d\n", count($differ));
echo $differ ? implode("\n", $differ) . "\n" : '';
printf("\nTests that fail on the library and not on stock PHP: %d\n", $regressions);
exit($regressions ? 1 : 0);
