<?php
/* Template rendering: records (arrays of strings and numbers) rendered into HTML pages with
 * escaping, sprintf, implode and output buffering, page after page; what a web request does. */
$rows = [];
for ($i = 0; $i < 2000; $i++) {
    $rows[] = [
        'id' => $i,
        'name' => "Item <$i> & \"friends\"",
        'tags' => array_map(fn($t) => "tag$t", range(0, $i % 7)),
        'price' => $i * 1.25,
        'body' => str_repeat("lorem ipsum $i ", 1 + $i % 40),
    ];
}
$total = 0;
for ($page = 0; $page < 60; $page++) {
    ob_start();
    echo "<html><body><table>\n";
    foreach ($rows as $row) {
        printf("<tr><td>%d</td><td>%s</td><td>%s</td><td>%.2f</td></tr>\n",
            $row['id'], htmlspecialchars($row['name']), implode(', ', $row['tags']), $row['price']);
        echo '<p>', htmlspecialchars(substr($row['body'], 0, 200 + $page)), "</p>\n";
    }
    echo "</table></body></html>\n";
    $html = ob_get_clean();
    $total += strlen($html) + count(explode("\n", $html));
}
echo $total, "\n";
